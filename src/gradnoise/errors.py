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
    """Input data cannot be used as given: a dataset (``.npz`` file, user Dataset, arrays) or
    values a computation cannot use (NaN/Inf, magnitudes whose result does not fit in float64,
    e.g. the variance of gradients of size 1e300). The message names the input and the fix."""


class StoreError(GradnoiseError, OSError):
    """A gradient store is missing, corrupt, or incompatible with the request."""


class StoreLockedError(StoreError):
    """Another process is writing the store (the message names its pid and host, and the way out)."""


class StaleLockWarning(UserWarning):
    """A writer took over the lock of a store whose previous writer died without releasing it."""


class SmallSampleWarning(UserWarning):
    """A statistic was computed on fewer samples than it is reliable for."""


class PerSampleFallbackWarning(UserWarning):
    """A per-example gradient path stepped aside for a slower exact one (the message says why)."""


class LossDecompositionWarning(UserWarning):
    """``loss_fn`` on a batch is not the mean or sum of its per-example losses (class weights,
    ``ignore_index`` with a mean over tokens...): gradnoise's minibatch gradient, the mean of the
    per-example gradients, differs from the gradient of that batch loss."""


class NonFiniteInputError(GradnoiseError, ValueError, FloatingPointError):
    """Inputs hold NaN or Inf (a bad input value, and the cause of non-finite gradients)."""


class MissingDataError(GradnoiseError, LookupError):
    """An analysis lacks what it needs from the run (no checkpoint reached, no step recorded,
    no measurement taken); the report says so in the analysis's section."""


class ProbeError(GradnoiseError, RuntimeError):
    """A :class:`gradnoise.Probe` used wrongly (``step`` before ``backward``, steps out of order,
    parameters that changed shape, ...): the message names the problem; every step recorded
    before stays readable in the run's store."""


class ProbeWarning(UserWarning):
    """Something a probe's run lacks that the user asked for (e.g. a checkpoint step never
    reached); the report says it too."""
