import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    """Tests are deterministic: seed the global generators that torch layers draw from."""
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 - only tests touch the global state
    yield
