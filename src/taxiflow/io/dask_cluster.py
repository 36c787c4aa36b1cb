"""The Dask cluster `train --engine dask` fits on: the scheduler at an address, else a LocalCluster for this run.

The local cluster is sized to the machine (one single-threaded worker process per core), binds
127.0.0.1, has no dashboard, and is closed with the run: nothing outlives it. An address that
does not answer fails in seconds, naming it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from taxiflow.core.errors import TaxiflowError

if TYPE_CHECKING:
    from distributed import Client

CONNECT_TIMEOUT_S = 10


class DaskClusterError(TaxiflowError):
    """The Dask scheduler could not be reached or has no workers."""


def _restore_environment(before: dict[str, str]) -> None:
    """This process's environment as it was.

    A Nanny sets its workers' variables (OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1, ...) in the
    environment of the process that starts them, before spawning each: left there, every process
    this one starts later would run numpy single-threaded, and a least-squares fit (an iterate that
    depends on BLAS's summation order) would give another model.
    """
    if dict(os.environ) != before:
        os.environ.clear()
        os.environ.update(before)


@contextlib.contextmanager
def dask_client(address: str | None) -> Iterator[tuple[Client, int]]:
    """(a connected Client, its number of workers)."""
    from distributed import Client, LocalCluster

    # Dask's own INFO lines (workers starting, the scheduler's address) say nothing to a user here.
    for name in ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.core", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with contextlib.ExitStack() as stack:
        if address is None:
            environment = dict(os.environ)
            stack.callback(_restore_environment, environment)  # registered first: runs last, once the workers stopped
            cluster = stack.enter_context(
                # The workers' own reports ("Compute Failed" with its traceback, at ERROR) would reach this console: the
                # failure itself is raised here, with its message.
                LocalCluster(
                    n_workers=os.cpu_count() or 1,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    silence_logs=logging.CRITICAL,
                )
            )
            client = stack.enter_context(Client(cluster))
            _restore_environment(environment)  # the workers have theirs
        else:
            try:
                client = stack.enter_context(Client(address, timeout=CONNECT_TIMEOUT_S))
            except (OSError, TimeoutError) as exc:
                raise DaskClusterError(f"Dask scheduler {address} did not answer within {CONNECT_TIMEOUT_S} s: {exc}") from None
        workers = len(client.scheduler_info()["workers"])
        if workers == 0:
            raise DaskClusterError(f"Dask scheduler {address or 'local'} has no workers")
        yield client, workers
