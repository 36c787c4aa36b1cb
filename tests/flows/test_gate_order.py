"""A backfill's pairs are admitted and gated in month order, whatever order their fits finish in."""

from __future__ import annotations

import random
import threading
import time

from taxiflow.flows.gate_order import PairOrder


def _run_pairs(n: int, max_running: int, fit_seconds: list[float], fails_before_gate: set[int]) -> tuple[list[int], list[int], int]:
    order = PairOrder(n, max_running)
    started, gated, running, peak = [], [], [0], [0]
    lock = threading.Lock()

    def pair(k: int) -> None:
        with order.admitted(k):
            with lock:
                started.append(k)
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            try:
                time.sleep(fit_seconds[k])  # the fit: later pairs may finish first
                if k not in fails_before_gate:
                    with order.gate_turn(k):
                        gated.append(k)
            finally:
                order.end(k)
                with lock:
                    running[0] -= 1

    threads = [threading.Thread(target=pair, args=(k,)) for k in reversed(range(n))]  # started in the worst order
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "pairs deadlocked"
    return started, gated, peak[0]


def test_pairs_start_in_month_order_at_most_n_at_once_and_gate_in_month_order():
    rng = random.Random(7)
    fits = [rng.uniform(0.0, 0.05) for _ in range(8)]
    fits[0] = 0.15  # the first pair fits slowest: the others must wait for its gate
    started, gated, peak = _run_pairs(8, 3, fits, fails_before_gate=set())
    assert started == list(range(8))
    assert gated == list(range(8))
    assert peak == 3


def test_a_pair_failing_before_its_gate_lets_later_pairs_gate_but_never_overtake_an_earlier_one():
    fits = [0.2, 0.0, 0.0, 0.0]  # pair 1 fails at once; pairs 2 and 3 must still wait for pair 0
    started, gated, _ = _run_pairs(4, 4, fits, fails_before_gate={1})
    assert gated == [0, 2, 3]


def test_one_at_a_time_never_deadlocks_on_a_waiting_gate():
    started, gated, peak = _run_pairs(5, 1, [0.01] * 5, fails_before_gate=set())
    assert (started, gated, peak) == ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4], 1)
