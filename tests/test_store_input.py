"""Arguments that used to be silently truncated are refused with an error naming the argument."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import gradnoise
from gradnoise.selection import build_selection


@pytest.mark.parametrize("coords", [2.5, 2.0, True, "3", np.float64(3)])
def test_coords_must_be_an_integer_not_truncated(coords):
    model = torch.nn.Linear(3, 2)
    with pytest.raises(TypeError, match=re.escape(f"coords must be an integer, got {coords!r} (")):
        gradnoise.select_params(model, coords=coords)
    with pytest.raises(TypeError, match="coords must be an integer"):
        build_selection([("w", (2, 3))], coords=coords)


def test_integer_coords_of_any_integer_type_are_accepted():
    model = torch.nn.Linear(3, 2)
    for coords in (3, np.int64(3), torch.tensor(3)):
        assert gradnoise.select_params(model, coords=coords).num_columns == 3
    with pytest.raises(TypeError, match="seed must be an integer"):
        gradnoise.select_params(model, coords=3, seed=0.5)
