"""Dask clusters for out-of-core analyses (``gradnoise analyze RUN_DIR --dask ...``).

:func:`dask_client` turns a scheduler specification into a connected ``distributed.Client``,
installed as dask's default scheduler while the ``with`` block lasts, so that the batched
statistics given dask arrays (:meth:`gradnoise.store.Run.to_dask`) run on that cluster:

* ``"local[N]"``: a ``distributed.LocalCluster`` of N worker processes (one thread each) on
  127.0.0.1 only, started here and shut down at the end of the block;
* ``"tcp://host:port"`` (or ``"host:port"``): the scheduler of a running cluster, whose workers
  must see the run directory at the same path;
* a ``distributed.Client`` (Python only): used as it is, left open.

Needs the ``dask`` extra (``pip install 'gradnoise[dask]'``); torch-free.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

from .errors import ConfigError

__all__ = ["dask_client", "parse_dask"]

_LOCAL = re.compile(r"local\[(\d+)\]$")


def parse_dask(spec: str) -> tuple[str, int | str]:
    """``("local", N)`` for ``"local[N]"``, ``("address", "tcp://...")`` for a scheduler address;
    anything else is a :class:`ConfigError`."""
    spec = spec.strip()
    found = _LOCAL.match(spec)
    if found:
        workers = int(found.group(1))
        if workers < 1:
            raise ConfigError(f"--dask {spec}: a local cluster needs at least 1 worker")
        return "local", workers
    if spec.startswith("local"):
        raise ConfigError(f"--dask {spec!r}: write local[N] with N the number of worker processes")
    address = spec if "://" in spec else f"tcp://{spec}"
    if not re.match(r"^[a-z]+://[^\s/:]+(:\d+)?/?$", address):
        raise ConfigError(
            f"--dask {spec!r} is neither local[N] nor a scheduler address (tcp://host:port)"
        )
    return "address", address


@contextlib.contextmanager
def dask_client(spec: Any, *, memory_limit: str | int | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``spec`` (see the module docstring), the default dask
    scheduler inside the block. ``memory_limit`` applies to the workers of ``local[N]``
    (default: dask's, the machine's memory shared between the workers)."""
    try:
        import distributed
    except ImportError as err:
        raise ConfigError(
            "running analyses on Dask needs dask and distributed: pip install 'gradnoise[dask]'"
        ) from err
    if isinstance(spec, distributed.Client):
        with spec.as_current():
            yield spec
        return
    kind, value = parse_dask(str(spec))
    with contextlib.ExitStack() as stack:
        if kind == "local":
            cluster = stack.enter_context(
                distributed.LocalCluster(
                    n_workers=int(value),
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    # the scheduler's HTTP routes, on loopback and a free port (the default
                    # :8787 may be taken by another cluster)
                    scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
                    memory_limit="auto" if memory_limit is None else memory_limit,
                )
            )
            client = stack.enter_context(distributed.Client(cluster, set_as_default=True))
        else:
            try:
                client = stack.enter_context(
                    distributed.Client(str(value), set_as_default=True, timeout="20s")
                )
            except OSError as err:
                raise ConfigError(
                    f"--dask {spec}: cannot reach a Dask scheduler there ({err})"
                ) from err
        yield client
