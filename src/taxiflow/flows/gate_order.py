"""Pairs of a backfill: admitted in month order, at most N at once, and gated in month order.

Each pair's gate compares its model with the champion of that moment: for the champion at the end
of a backfill to be the gate's rules applied chronologically, pair k's gate must come after pair
k-1's, whichever finished fitting first. A backfill gives each pair a turn (`GATE_TURN`, a context
variable: the `train` flow's parameters stay the request's); a standalone run has none and gates at once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from contextvars import ContextVar

GATE_TURN: ContextVar[AbstractContextManager[None] | None] = ContextVar("taxiflow_gate_turn", default=None)


class PairOrder:
    """Pairs 0..n-1 (month order) of one backfill.

    Admission: pair k starts once pairs 0..k-1 have started and fewer than `max_running` run, so a
    pair waiting for its gate turn never holds a slot an earlier pair needs (no deadlock).
    Gate turns: pair k gates once every earlier pair has gated or ended without gating: every
    earlier one, not just k-1, since a pair that fails before its gate ends its turn early.
    """

    def __init__(self, n: int, max_running: int) -> None:
        self._ended = [threading.Event() for _ in range(n)]
        self._admission = threading.Condition()
        self._next, self._running, self._max_running = 0, 0, max_running

    @contextlib.contextmanager
    def admitted(self, k: int) -> Iterator[None]:
        with self._admission:
            self._admission.wait_for(lambda: self._next == k and self._running < self._max_running)
            self._next += 1
            self._running += 1
            self._admission.notify_all()
        try:
            yield
        finally:
            with self._admission:
                self._running -= 1
                self._admission.notify_all()

    @contextlib.contextmanager
    def gate_turn(self, k: int) -> Iterator[None]:
        for earlier in self._ended[:k]:
            earlier.wait()
        try:
            yield
        finally:
            self.end(k)

    def end(self, k: int) -> None:
        """Pair k will not gate (skipped, failed, or done): later pairs need not wait for it. Idempotent."""
        self._ended[k].set()
