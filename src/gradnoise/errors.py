"""Exceptions and warnings raised by gradnoise.

Every error derives from :class:`GradnoiseError` and also from the builtin a user would
naturally catch (``ValueError``, ``TypeError``, ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class GradnoiseError(Exception):
    """Base class of all gradnoise errors."""


class UnsupportedLayerError(GradnoiseError, ValueError):
    """A layer makes per-sample gradients ill-defined (e.g. train-mode BatchNorm)."""


class NonFiniteGradientError(GradnoiseError, FloatingPointError):
    """A gradient holds NaN or Inf; the message names the parameter (and step)."""


class InsufficientDataError(GradnoiseError, ValueError):
    """Too few samples (or examples) for the requested computation."""


class ConfigError(GradnoiseError, ValueError):
    """A study setting, CLI option, analysis option or model option is wrong; the message names
    the setting (and the file it came from) and what it accepts."""


class DataError(GradnoiseError, ValueError):
    """A dataset (``.npz`` file, user Dataset, arrays) cannot be used as given; the message names
    the input and the fix."""


class StoreError(GradnoiseError, OSError):
    """A gradient store is missing, corrupt, or incompatible with the request."""


class SmallSampleWarning(UserWarning):
    """A statistic was computed on fewer samples than it is reliable for."""
