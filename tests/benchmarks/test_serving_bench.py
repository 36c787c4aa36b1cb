"""The serving benchmark's reading of wrk's report (the benchmark itself needs wrk and ~5 min: `make bench-serving`)."""

from __future__ import annotations

import pytest

from benchmarks.serving.run import derive, parse_wrk

# A real `wrk --latency` report (wrk 4.1 against `taxiflow serve`), with non-2xx and socket-error lines added as wrk prints them.
REPORT = """Running 1s test @ http://127.0.0.1:8077/predict
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.89ms  704.48us   8.09ms   91.48%
    Req/Sec     1.08k   152.59     1.22k    90.00%
  Latency Distribution
     50%  704.48us
     75%    1.97ms
     90%    2.38ms
     99%    1.35s
  1076 requests in 1.00s, 187.16KB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   1072.13
Transfer/sec:    186.49KB
"""


def test_wrk_report_units_and_failures_are_read():
    measured = parse_wrk(REPORT)
    assert measured["requests_per_s"] == 1072.13 and measured["requests"] == 1076
    assert measured["p50_ms"] == pytest.approx(0.70448) and measured["p99_ms"] == pytest.approx(1350.0)
    assert (measured["non_2xx"], measured["socket_errors"]) == (4, 3)
    with pytest.raises(ValueError, match="not a wrk report"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


def test_ratios_are_taxiflow_over_mlflow_medians():
    def server(rps: list[float], p99: list[float], batch_rides: list[float], batch_p99: list[float], cold: list[float], rss: list[float]) -> dict:
        return {
            "cold_start_s": cold,
            "idle_rss_mb": rss,
            "loads": {
                "one_ride": [{"requests_per_s": r, "p99_ms": p} for r, p in zip(rps, p99, strict=True)],
                "batch_1000": [{"rides_per_s": r, "p99_ms": p} for r, p in zip(batch_rides, batch_p99, strict=True)],
            },
        }

    mlflow = server([100, 200, 150], [90, 100, 95], [30_000, 40_000, 35_000], [150, 160, 170], [6, 7, 8], [500, 600, 550])
    taxiflow = server([800, 600, 700], [20, 10, 30], [70_000, 60_000, 80_000], [50, 60, 200], [1, 2, 4], [100, 200, 150])
    figures = derive({"servers": {"mlflow": mlflow, "taxiflow": taxiflow}})
    assert figures["one_ride_throughput_ratio"] == pytest.approx(700 / 150) and figures["one_ride_p99_ratio"] == pytest.approx(20 / 95)
    assert figures["batch_rides_per_s_ratio"] == pytest.approx(70_000 / 35_000) and figures["batch_p99_ms"] == 60
    assert figures["cold_start_s"] == 2 and figures["idle_rss_ratio"] == pytest.approx(150 / 550)
    assert all(figures["met"].values())
