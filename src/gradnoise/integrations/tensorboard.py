"""Headline scalars along training in TensorBoard, beside the user's own curves.

A :class:`gradnoise.Probe` (``tensorboard=True`` or a directory) and ``gradnoise run
--tensorboard DIR`` write, under ``gradnoise/``: ``grad_norm`` (every recorded step), ``loss``,
``test_loss`` / ``test_acc`` (when evaluated), ``sgn_norm`` (mean ||g_B - G|| over the tracked
coordinates) and ``sgn_tail_index`` (median per-coordinate Mohammadi tail index of the SGN) at
checkpoints, and ``ngv`` / ``gsnr`` at the variance analysis's measurements.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError


def summary_writer(log_dir: str | Path) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` writing into ``log_dir``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ConfigError(
            "writing TensorBoard scalars needs the tensorboard package: "
            "pip install 'gradnoise[tensorboard]'"
        ) from err
    return SummaryWriter(log_dir=str(log_dir))
