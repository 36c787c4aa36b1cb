"""Prepared months cached by identity: reused, verified before use, rebuilt when damaged, never half-written."""

from __future__ import annotations

import threading

import pytest

from taxiflow.core.months import Month
from taxiflow.core.preparation import PreparedTrips, prepare_trips
from taxiflow.core.schema import layout_for
from taxiflow.io.failpoints import ENV, InjectedFailure
from taxiflow.io.prepared_cache import PreparedTripsCache
from taxiflow.io.trip_tables import read_trip_table

KEY = "a" * 64


@pytest.fixture(scope="module")
def january(tlc_dir) -> PreparedTrips:
    path = str(tlc_dir / "green_tripdata_2023-01.parquet")
    return prepare_trips(read_trip_table(path, layout_for("green"), list(layout_for("green").columns)), source=path, month=Month(2023, 1))


class Preparer:
    """Counts how often the month is actually prepared."""

    def __init__(self, prepared: PreparedTrips) -> None:
        self.prepared, self.calls = prepared, 0

    def __call__(self) -> PreparedTrips:
        self.calls += 1
        return self.prepared


def _get(cache: PreparedTripsCache, prepare: Preparer, *, refresh: bool = False) -> tuple[PreparedTrips, bool]:
    return cache.get_or_prepare(KEY, taxi="green", month="2023-01", data_identity="sha", prepare=prepare, refresh=refresh)


def test_a_month_is_prepared_once_then_read_back_equal(tmp_path, january):
    cache, prepare = PreparedTripsCache(tmp_path), Preparer(january)
    first, hit = _get(cache, prepare)
    assert (hit, prepare.calls) == (False, 1)
    again, hit = _get(cache, prepare)
    assert (hit, prepare.calls) == (True, 1)
    assert again.frame.equals(january.frame) and again.frame.schema == january.frame.schema
    assert (again.rows_read, again.dropped) == (january.rows_read, january.dropped)
    ((entry, _),) = cache.entries()
    assert (entry.month, entry.rows_kept) == ("2023-01", january.rows_kept)
    _, hit = _get(cache, prepare, refresh=True)  # --refresh bypasses, and rewrites the entry
    assert (hit, prepare.calls) == (False, 2)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda f, r: f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2]), id="truncated"),
        pytest.param(lambda f, r: f.write_bytes(f.read_bytes()[:-9] + b"x" + f.read_bytes()[-8:]), id="one-byte-changed"),
        pytest.param(lambda f, r: f.unlink(), id="file-missing"),
        pytest.param(lambda f, r: r.write_text("{not json"), id="record-corrupt"),
        pytest.param(lambda f, r: r.unlink(), id="record-missing"),
    ],
)
def test_a_damaged_entry_is_never_used_but_rebuilt(tmp_path, january, damage, caplog):
    cache, prepare = PreparedTripsCache(tmp_path), Preparer(january)
    _get(cache, prepare)
    damage(tmp_path / f"{KEY}.parquet", tmp_path / f"{KEY}.json")
    rebuilt, hit = _get(cache, prepare)
    assert (hit, prepare.calls) == (False, 2)
    assert rebuilt.frame.equals(january.frame)
    _, hit = _get(cache, prepare)  # and the rebuilt entry serves the next run
    assert hit


def test_a_write_that_fails_leaves_no_entry(tmp_path, january, monkeypatch):
    cache, prepare = PreparedTripsCache(tmp_path), Preparer(january)
    monkeypatch.setenv(ENV, "prepared-cache-write")
    with pytest.raises(InjectedFailure):
        _get(cache, prepare)
    assert cache.entries() == [] and not list(tmp_path.glob("*.parquet")) and not list(tmp_path.glob("*.part"))
    monkeypatch.delenv(ENV)
    _, hit = _get(cache, prepare)
    assert not hit and prepare.calls == 2


def test_concurrent_runs_needing_the_same_month_prepare_it_once(tmp_path, january):
    cache, prepare = PreparedTripsCache(tmp_path), Preparer(january)
    hits: list[bool] = []
    threads = [threading.Thread(target=lambda: hits.append(_get(cache, prepare)[1])) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert prepare.calls == 1 and sorted(hits) == [False, True, True]


def test_remove_frees_the_entry(tmp_path, january):
    cache = PreparedTripsCache(tmp_path)
    _get(cache, Preparer(january))
    freed = cache.remove(KEY)
    assert freed > 0 and cache.entries() == [] and not (tmp_path / f"{KEY}.parquet").exists()
