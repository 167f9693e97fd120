"""A memory budget for captures (torch-free): ``max_memory="4GiB"`` sets how many examples a chunk holds.

Per-example gradients are computed a chunk of examples at a time. One example's gradient
working set is estimated as::

    bytes_per_example = GRADIENT_COPIES * P * itemsize

where ``P`` counts every element of the parameter *tensors* being differentiated (a coordinate
subset of a tensor still has its whole per-example gradient computed before the subset is taken),
``itemsize`` is the parameters' dtype size (4 for float32, 8 for float64) and ``GRADIENT_COPIES``
(3) covers the per-example gradient as a layer rule or ``torch.func`` produces it, its row in the
output (or the Gram matrix's feature buffer) and one temporary of the same size (an unfolded
convolution input, a reshaped copy). The chunk's forward also saves activations for its
backward, ``activation_bytes`` per example (measured, as for the batch gradients below). A
chunk of ``per_sample_grads``/``iter_per_sample_grads`` then holds::

    chunk = max_memory // (bytes_per_example + ACTIVATION_COPIES * activation_bytes)

(at least 1; a smaller budget is refused). The budget bounds this per-example working set
only: the model, the optimizer, the data held in memory and the returned arrays (``[N, C]``
per-sample gradients of ``C`` selected coordinates, ``[K, C]`` SGN) come on top.

The batch gradients (``full_grad``, ``minibatch_grads``, ``gradient_noise``) and the Hessian
operator hold one gradient of P and the activations of the examples in one forward. Under
``max_memory`` a forward holds at most::

    sub_batch = max_memory // (ACTIVATION_COPIES * activation_bytes)

examples, where ``activation_bytes`` is *measured*: the bytes autograd saves for backward per
example (storages seen by a ``saved_tensors_hook`` in forwards of one and of a few examples;
their difference, so the parameters' own saved copies do not count), including the first
backward's graph for Hessian-vector products. ``ACTIVATION_COPIES`` (2) covers the saved
activations plus the activation gradients alive during backward. A minibatch larger than the
sub-batch is summed over sub-batches (exact: the audit has refused every layer that couples the
examples of a batch), and the Hessian keeps its per-batch graphs between products only when all
of them fit. ``benchmarks/scale.py`` measures peak memory against ``baseline + max_memory``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:  # torch-free at import: the study's config parses budgets
    import torch
    from torch import nn

#: copies of one example's gradient held while it is computed (see the module docstring)
GRADIENT_COPIES = 3
#: copies of one example's saved activations alive during a backward (see the module docstring)
ACTIVATION_COPIES = 2

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
}
_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_memory(value: object, what: str = "max_memory") -> int | None:
    """A memory size in bytes: None (no budget), a positive integer of bytes, or a string such
    as ``"4GiB"``, ``"512MiB"``, ``"2.5GB"``, ``"1000000"`` (units B, KB/MB/GB/TB = powers of
    1000, KiB/MiB/GiB/TiB = powers of 1024, K/M/G/T = powers of 1024; case-insensitive).

    Raises:
        ConfigError: anything else, naming ``what`` and an example of a valid value.
    """
    if value is None:
        return None
    hint = f'{what} must be a size such as "4GiB", "512MiB" or a number of bytes'
    if isinstance(value, bool):
        raise ConfigError(f"{hint}, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ConfigError(f"{hint} (at least 1 byte), got {value}")
        return int(value)
    if isinstance(value, float):
        raise ConfigError(f'{hint}; write a float as a string with its unit ("{value}GiB")')
    if not isinstance(value, str):
        raise ConfigError(f"{hint}, got {type(value).__name__}")
    match = _PATTERN.match(value)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ConfigError(f"{hint} (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), got {value!r}")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1:
        raise ConfigError(f"{hint} (at least 1 byte), got {value!r}")
    return size


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units (``"3.2 GiB"``)."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def bytes_per_example(tensors: Iterable[torch.Tensor]) -> int:
    """``GRADIENT_COPIES * P * itemsize`` over the parameter tensors ``tensors``."""
    tensors = list(tensors)
    if not tensors:
        return 0
    itemsize = max(t.element_size() for t in tensors)
    return GRADIENT_COPIES * sum(t.numel() for t in tensors) * itemsize


def chunk_for(
    tensors: Iterable[torch.Tensor],
    max_memory: object,
    *,
    what: str = "max_memory",
    activation_bytes: int = 0,
) -> int | None:
    """Examples per chunk so that their gradient working set, and ``ACTIVATION_COPIES`` times
    the ``activation_bytes`` each example's forward saves (measured by the caller; 0: not
    counted), fit ``max_memory`` (None: no budget, None back).

    Raises:
        ConfigError: the budget is below one example's working set; the message names the
            smallest budget that works.
    """
    budget = parse_memory(max_memory, what)
    if budget is None:
        return None
    tensors = list(tensors)
    gradients = bytes_per_example(tensors)
    if gradients == 0:
        return None
    activations = ACTIVATION_COPIES * max(int(activation_bytes), 0)
    per_example = gradients + activations
    if budget < per_example:
        params = sum(t.numel() for t in tensors)
        itemsize = max(t.element_size() for t in tensors)
        saved = (
            f" + {ACTIVATION_COPIES} x {int(activation_bytes):,} bytes of activations saved "
            "for backward"
            if activations
            else ""
        )
        raise ConfigError(
            f"{what}={max_memory!r} ({budget:,} bytes) is below one example's gradient working "
            f"set ({GRADIENT_COPIES} x {params:,} parameters x {itemsize} bytes{saved} = "
            f"{per_example:,} bytes, {format_bytes(per_example)}); raise {what} to at least "
            f'"{_round_up(per_example)}", or capture fewer parameters (params=/select=)'
        )
    return budget // per_example


def batch_for(
    activation_bytes: int,
    max_memory: object,
    *,
    what: str = "max_memory",
    extra: int = 0,
    fixed: int = 0,
) -> int | None:
    """Examples per forward so that ``fixed + n * (ACTIVATION_COPIES * activation_bytes +
    extra)`` fits ``max_memory``: ``extra`` is what the computation holds per example besides
    the activations (e.g. Gradient Clustering's features), ``fixed`` what it holds whatever the
    batch (None: no budget, None back).

    Raises:
        ConfigError: the budget is below one example; the message names the smallest budget
            that works.
    """
    budget = parse_memory(max_memory, what)
    if budget is None:
        return None
    per_example = ACTIVATION_COPIES * max(int(activation_bytes), 1) + int(extra)
    if budget < fixed + per_example:
        held = f"{format_bytes(fixed)} held whatever the batch + " if fixed else ""
        working = f" + {int(extra):,} bytes of working set" if extra else ""
        raise ConfigError(
            f"{what}={max_memory!r} ({budget:,} bytes) is below {held}one example's activations "
            f"in a forward and backward ({ACTIVATION_COPIES} x {int(activation_bytes):,} bytes "
            f"saved for backward{working} = {format_bytes(per_example)}); raise {what} to at "
            f'least "{_round_up(fixed + per_example)}"'
        )
    return (budget - fixed) // per_example


def model_chunk(model: nn.Module, max_memory: object, *, what: str = "max_memory") -> int | None:
    """:func:`chunk_for` over all trainable parameters of ``model``."""
    return chunk_for((p for p in model.parameters() if p.requires_grad), max_memory, what=what)


def _round_up(n: int) -> str:
    if n < 2**20:
        return f"{-(-n // 2**10)}KiB"
    mib = -(-n // 2**20)
    return f"{mib}MiB" if mib < 1024 else f"{-(-mib // 1024)}GiB"


def release_memory(*, collect: bool = True) -> None:
    """Collect reference cycles (hooked modules hold them; ``collect``) and, on glibc, hand
    freed heap pages back to the system (``malloc_trim``). A forward's activations and
    gradients below glibc's (dynamic) mmap threshold live on the heap, whose freed pages
    otherwise stay resident; large arrays allocated next (a forward's logits, statistics over
    all P coordinates: mmapped) cannot reuse them, so they would add to the peak. Under a
    ``max_memory`` budget the batch gradients trim when they return, and their callers release
    between capturing and computing statistics."""
    if collect:
        gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
