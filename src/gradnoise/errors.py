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


class InvalidDataError(GradnoiseError, ValueError):
    """Input values a computation cannot use as given: NaN/Inf, or magnitudes whose result does
    not fit in float64 (e.g. the variance of gradients of size 1e300). The message names the
    input and the fix."""


class StoreError(GradnoiseError, OSError):
    """A gradient store is missing, corrupt, or incompatible with the request."""


class SmallSampleWarning(UserWarning):
    """A statistic was computed on fewer samples than it is reliable for."""
