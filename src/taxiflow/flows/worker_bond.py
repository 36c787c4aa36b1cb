"""Tie a flow-run process to the worker that started it.

A process worker starts each flow run in its own process group, so killing the worker leaves the
run's process alive: it could finish and register a model nobody is watching, or hang Running.
With TAXIFLOW_EXIT_WITH_WORKER=1 (set by `taxiflow stack up` for its worker), Linux sends the run
SIGTERM when the worker dies, and Prefect records the run as Crashed at once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def exit_with_worker() -> None:
    if os.environ.get("TAXIFLOW_EXIT_WITH_WORKER") != "1" or not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        return
    if os.getppid() != parent:  # the worker died before the bond was made
        os.kill(os.getpid(), signal.SIGTERM)
