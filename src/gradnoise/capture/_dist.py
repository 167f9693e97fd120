"""Sharing a computation among the ranks of a ``torch.distributed`` process group.

Every rank calls the same function with the *same* data; each computes its shard (a contiguous
block of examples, or every W-th minibatch / block pair) and the partial results are summed with
``all_reduce``, so every rank returns what one process would have computed, up to the order of
floating-point summation. The ranks' data are compared first (size and a checksum of the first
examples): different data on different ranks is refused instead of silently mixed.

Nothing is shared unless asked for (``process_group=``): a call made on one rank only (e.g. rank 0
of a training job) must not wait for ranks that never join.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

ProcessGroupArg = Any  # a torch.distributed ProcessGroup, "world", or None


@dataclass(frozen=True)
class Shard:
    """This process's part of a computation: ``rank`` of ``world`` in ``group`` (None: alone)."""

    group: Any
    rank: int = 0
    world: int = 1

    @property
    def shared(self) -> bool:
        return self.group is not None and self.world > 1

    def block(self, n: int) -> range:
        """The contiguous block of ``range(n)`` this rank computes."""
        return range(n * self.rank // self.world, n * (self.rank + 1) // self.world)

    def mine(self, k: int) -> bool:
        """Is item ``k`` (a minibatch, a block pair) computed by this rank (round robin)?"""
        return k % self.world == self.rank

    def sum_(self, t: Tensor) -> Tensor:
        """In-place sum over the ranks (no-op alone)."""
        if self.shared:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (``[obj]`` alone)."""
        if not self.shared:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def check_same_data(self, n: int, probe: Tensor, what: str) -> None:
        """Refuse ranks whose data differ (size, or a checksum of the first examples)."""
        if not self.shared:
            return
        stamp = torch.tensor(
            [
                float(n),
                float(probe.detach().double().sum()),
                float(probe.detach().double().abs().sum()),
            ],
            dtype=torch.float64,
            device=probe.device,
        )
        low, high = stamp.clone(), stamp.clone()
        import torch.distributed as dist

        dist.all_reduce(low, op=dist.ReduceOp.MIN, group=self.group)
        dist.all_reduce(high, op=dist.ReduceOp.MAX, group=self.group)
        if not torch.equal(low, high):
            raise ValueError(
                f"{what} with process_group: the ranks hold different data (sizes or first "
                f"examples differ: {low.tolist()} vs {high.tolist()}). Every rank must pass the same "
                "data and gets the same result; to compute on this rank's data alone, pass "
                "process_group=None"
            )


def shard_of(process_group: ProcessGroupArg) -> Shard:
    """Resolve ``process_group=``: None (this process alone), ``"world"`` (the default group) or a
    ``torch.distributed`` ProcessGroup."""
    if process_group is None:
        return Shard(None)
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(
            "process_group was given but torch.distributed is not initialised; call "
            "torch.distributed.init_process_group first, or pass process_group=None"
        )
    group = dist.group.WORLD if process_group == "world" else process_group
    return Shard(group, dist.get_rank(group), dist.get_world_size(group))


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel``/``DataParallel`` (their hooks and reducers
    stay out of gradnoise's forwards); any other model as is."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    return model
