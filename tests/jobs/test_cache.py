"""`taxiflow cache ls|prune` over real cache entries: what is listed, what is removed, what is never touched."""

from __future__ import annotations

import json
import os
import shutil

import polars as pl
import pyarrow.parquet as pq
import pytest

from taxiflow.cli import main, parse_size
from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.preparation import PreparedTrips
from taxiflow.io.month_cache import MonthCache
from taxiflow.io.prepared_cache import PreparedTripsCache
from taxiflow.io.sources import FetchedObject
from taxiflow.jobs.cache import CacheItem, cache_items, choose_evictions
from taxiflow.settings import TaxiflowSettings


class CopySource:
    """A month source that copies the real files (what a download would write)."""

    identity = "https://tlc.example/trip-data/"

    def __init__(self, tlc_dir) -> None:
        self.tlc_dir = tlc_dir

    def fetch(self, taxi: str, month: str, dest) -> FetchedObject:
        shutil.copyfile(self.tlc_dir / f"{taxi}_tripdata_{month}.parquet", dest)
        return FetchedObject(origin=self.identity + f"{taxi}_tripdata_{month}.parquet", etag=None)


@pytest.fixture
def settings(tmp_path, tlc_dir, monkeypatch) -> TaxiflowSettings:
    monkeypatch.setenv("TAXIFLOW_STATE_DIR", str(tmp_path / "state"))
    settings = TaxiflowSettings()
    months = MonthCache(settings.cache_dir())
    for i, month in enumerate(("2023-01", "2023-02")):
        entry = months.fetch(CopySource(tlc_dir), "green", month, verify=lambda path: pq.read_metadata(path).num_rows)
        os.utime(entry.path + ".json", (1000.0 + i, 1000.0 + i))  # 2023-01 used longest ago
    prepared = PreparedTripsCache(settings.prepared_dir())
    frame = pl.DataFrame({"duration_min": [5.0, 7.0]})
    prepared.get_or_prepare("k" * 64, taxi="green", month="2023-01", data_identity="sha", prepare=lambda: PreparedTrips(frame, 3, {"x": 1}))
    return settings


def test_ls_lists_both_caches_least_recently_used_first(settings, capsys):
    items = cache_items(settings)
    assert [(i.kind, i.month) for i in items] == [("month", "2023-01"), ("month", "2023-02"), ("prepared", "2023-01")]
    assert main(["cache", "ls", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [row["kind"] for row in listed] == ["month", "month", "prepared"] and all(row["size_bytes"] > 0 for row in listed)


def test_prune_to_a_size_removes_the_least_recently_used_and_dry_run_removes_nothing(settings, capsys):
    items = cache_items(settings)
    keep = items[-1].size_bytes + items[-2].size_bytes  # room for the two most recently used
    assert main(["cache", "prune", "--max-size", f"{keep}B", "--dry-run"]) == 0
    assert "would remove month green 2023-01" in capsys.readouterr().out and len(cache_items(settings)) == 3
    assert main(["cache", "prune", "--max-size", f"{keep}B"]) == 0
    left = cache_items(settings)
    assert [(i.kind, i.month) for i in left] == [("month", "2023-02"), ("prepared", "2023-01")]
    assert not (settings.cache_dir() / items[0].detail.rsplit("/", 1)[-1]).exists()
    assert MonthCache(settings.cache_dir()).entries()[0].month == "2023-02"  # what is left still verifies


def test_prune_by_age_and_bad_arguments(settings, capsys):
    assert main(["cache", "prune", "--older-than", "1"]) == 0  # both months were last used in 1970
    assert [(i.kind, i.month) for i in cache_items(settings)] == [("prepared", "2023-01")]
    assert main(["cache", "prune"]) == 2
    assert main(["cache", "prune", "--max-size", "lots"]) == 2
    assert "expected a size like 2GB or 500MB, got 'lots'" in capsys.readouterr().err


def test_sizes_and_eviction_order():
    assert (parse_size("2GB", argument="s"), parse_size("500mb", argument="s"), parse_size("0", argument="s")) == (2 * 10**9, 500 * 10**6, 0)
    with pytest.raises(InvalidArgumentError):
        parse_size("-1GB", argument="--max-size")
    items = [CacheItem("month", "green", m, 100, used, "", lambda: 0) for m, used in (("a", 30.0), ("b", 10.0), ("c", 20.0))]
    assert [i.month for i in choose_evictions(items, max_bytes=150, older_than_s=None, now=40.0)] == ["b", "c"]
    assert [i.month for i in choose_evictions(items, max_bytes=None, older_than_s=15.0, now=40.0)] == ["b", "c"]
    assert choose_evictions(items, max_bytes=300, older_than_s=None, now=40.0) == []
