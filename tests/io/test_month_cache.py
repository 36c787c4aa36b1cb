"""Sources and the month cache against a real local HTTP server that injects network faults."""

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from taxiflow.core.errors import DataFileError, DownloadError, MonthNotAvailableError
from taxiflow.io.month_cache import MonthCache, file_sha256
from taxiflow.io.sources import HttpSource, RetryPolicy
from taxiflow.io.trip_files import get_month_file, local_month_file
from tests.support.servers import FaultPlan, faulty_file_server, stage_tlc_tree

NAME = "green_tripdata_2023-01.parquet"
FAST = RetryPolicy(retries=4, backoff_s=0.01, max_backoff_s=0.05)


def _get(base_url, cache, month="2023-01", policy=FAST, timeout_s=5.0):
    return get_month_file("green", month, data_dir=None, source=HttpSource(base_url, timeout_s=timeout_s, policy=policy, progress=False), cache=cache)


def _cache_files(cache: MonthCache):
    return sorted(p.name for p in cache.root.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def test_local_file_is_read_in_place(tlc_dir):
    trip_file = local_month_file("green", "2023-01", tlc_dir)
    assert (trip_file.origin, trip_file.num_rows) == ("local", 68_211)
    assert trip_file.sha256.startswith("9f0e03dd7f8f94ec")


def test_download_lands_verified_and_a_second_get_needs_no_network(tlc_dir, tmp_path):
    cache = MonthCache(tmp_path / "cache")
    plan = FaultPlan()
    with faulty_file_server(stage_tlc_tree(tlc_dir, tmp_path / "site"), plan) as base_url:
        first = _get(base_url, cache)
    assert first.sha256 == file_sha256(tlc_dir / NAME) and first.num_rows == 68_211 and first.etag
    # The server is gone: only the cache can answer.
    again = _get(base_url, cache)
    assert again == first
    assert plan.hits == {NAME: 1}
    assert _cache_files(cache) == [NAME, NAME + ".json"]


def test_transient_faults_are_retried_until_the_file_arrives_intact(tlc_dir, tmp_path):
    cache = MonthCache(tmp_path / "cache")
    plan = FaultPlan({NAME: ["500", "reset", "truncate", "stall"]}, stall_s=2.0)
    with faulty_file_server(stage_tlc_tree(tlc_dir, tmp_path / "site"), plan) as base_url:
        trip_file = _get(base_url, cache, timeout_s=0.5)
    assert plan.hits[NAME] == 5
    assert file_sha256(trip_file.path) == file_sha256(tlc_dir / NAME)
    assert _cache_files(cache) == [NAME, NAME + ".json"], "no partial download may remain"


def test_not_published_is_not_retried(tlc_dir, tmp_path):
    cache = MonthCache(tmp_path / "cache")
    plan = FaultPlan()
    with faulty_file_server(stage_tlc_tree(tlc_dir, tmp_path / "site"), plan) as base_url:
        with pytest.raises(MonthNotAvailableError, match=r"green 2031-07 is not published: .*green_tripdata_2031-07\.parquet answered HTTP 404"):
            _get(base_url, cache, month="2031-07")
    assert plan.hits == {"green_tripdata_2031-07.parquet": 1}
    assert _cache_files(cache) == []


def test_persistent_server_errors_give_up_with_the_count_and_cache_nothing(tlc_dir, tmp_path):
    cache = MonthCache(tmp_path / "cache")
    plan = FaultPlan({NAME: ["always500"]})
    with faulty_file_server(stage_tlc_tree(tlc_dir, tmp_path / "site"), plan) as base_url:
        with pytest.raises(DownloadError, match=r"green 2023-01: giving up after 3 attempts: .*HTTP 500"):
            _get(base_url, cache, policy=RetryPolicy(retries=2, backoff_s=0.01))
    assert plan.hits[NAME] == 3
    assert _cache_files(cache) == []


def test_html_error_page_never_enters_the_cache(tmp_path):
    site = tmp_path / "site" / "trip-data"
    site.mkdir(parents=True)
    (site / NAME).write_text("<html><body>Service temporarily unavailable</body></html>")
    cache = MonthCache(tmp_path / "cache")
    with faulty_file_server(tmp_path / "site", FaultPlan()) as base_url:
        with pytest.raises(DataFileError, match=r"green_tripdata_2023-01\.parquet from http://127\.0\.0\.1:\d+/trip-data/: not a readable parquet file"):
            _get(base_url, cache)
    assert _cache_files(cache) == []


def test_concurrent_fetches_of_one_month_download_it_once(tlc_dir, tmp_path):
    cache = MonthCache(tmp_path / "cache")
    plan = FaultPlan({NAME: ["slow"]}, stall_s=1.0)
    results, errors = [], []
    with faulty_file_server(stage_tlc_tree(tlc_dir, tmp_path / "site"), plan) as base_url:

        def fetch():
            try:
                results.append(_get(base_url, MonthCache(cache.root)))
            except Exception as exc:  # noqa: BLE001 - surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=fetch) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert plan.hits[NAME] == 1
    assert len({r.sha256 for r in results}) == 1 and results[0].sha256 == file_sha256(tlc_dir / NAME)


def test_a_cached_file_that_no_longer_matches_its_record_is_fetched_again(tlc_dir, tmp_path):
    cache = MonthCache(tmp_path / "cache")
    plan = FaultPlan()
    with faulty_file_server(stage_tlc_tree(tlc_dir, tmp_path / "site"), plan) as base_url:
        first = _get(base_url, cache)
        with open(first.path, "r+b") as fh:
            fh.truncate(1000)
        second = _get(base_url, cache)
    assert plan.hits[NAME] == 2
    assert file_sha256(second.path) == first.sha256


def _flip_middle_bytes(path: Path, n: int = 64) -> None:
    """Overwrite `n` bytes in the middle of `path` with their complement, keeping its size."""
    with open(path, "r+b") as fh:
        middle = os.fstat(fh.fileno()).st_size // 2
        fh.seek(middle)
        flipped = bytes(b ^ 0xFF for b in fh.read(n))
        fh.seek(middle)
        fh.write(flipped)


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("restore_mtime", [False, True], ids=["mtime-changed", "mtime-restored"])
def test_a_same_size_corruption_is_not_served_but_fetched_again(tlc_dir, tmp_path, caplog, restore_mtime):
    original = _sha256(tlc_dir / NAME)
    cache = MonthCache(tmp_path / "cache")
    plan = FaultPlan()
    with faulty_file_server(stage_tlc_tree(tlc_dir, tmp_path / "site"), plan) as base_url:
        first = _get(base_url, cache)
        before = os.stat(first.path)
        _flip_middle_bytes(Path(first.path))
        if restore_mtime:
            # Only the inode's change time (which no user call can set back) still tells.
            os.utime(first.path, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = os.stat(first.path)
        assert (after.st_size, after.st_ino) == (before.st_size, before.st_ino) and _sha256(first.path) != original
        if restore_mtime:
            assert after.st_mtime_ns == before.st_mtime_ns and after.st_ctime_ns != before.st_ctime_ns
        second = _get(base_url, cache)
    assert plan.hits == {NAME: 2}, "the corrupted copy must not be served: the month is downloaded again"
    assert second.sha256 == original and _sha256(second.path) == original
    assert f"{first.path}: sha256" in caplog.text


def _record(path) -> dict:
    return json.loads(Path(f"{path}.json").read_text())


def test_a_damaged_footer_is_caught_even_when_the_stat_stamp_still_matches(tlc_dir, tmp_path, caplog):
    cache = MonthCache(tmp_path / "cache")
    plan = FaultPlan()
    with faulty_file_server(stage_tlc_tree(tlc_dir, tmp_path / "site"), plan) as base_url:
        first = _get(base_url, cache)
        path = Path(first.path)
        with open(path, "r+b") as fh:
            fh.seek(-4, os.SEEK_END)
            fh.write(b"JUNK")  # the trailing "PAR1" magic
        # Damage below the filesystem (bad media) leaves size, times and inode alone: simulated by
        # stamping the record with the damaged file's stat.
        st = os.stat(path)
        record = _record(path) | {"stat": {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}}
        Path(f"{path}.json").write_text(json.dumps(record))
        second = _get(base_url, cache)
    assert plan.hits == {NAME: 2}
    assert _sha256(second.path) == _sha256(tlc_dir / NAME)
    assert f"cached {path}: parquet footer unreadable" in caplog.text


def test_a_record_from_before_stat_stamps_is_verified_by_digest_then_stamped(tlc_dir, tmp_path):
    cache = MonthCache(tmp_path / "cache")
    plan = FaultPlan()
    with faulty_file_server(stage_tlc_tree(tlc_dir, tmp_path / "site"), plan) as base_url:
        first = _get(base_url, cache)
    legacy = {k: v for k, v in _record(first.path).items() if k != "stat"}
    Path(f"{first.path}.json").write_text(json.dumps(legacy))
    # The server is gone: the old record must still be honoured.
    again = _get(base_url, cache)
    assert again == first and plan.hits == {NAME: 1}
    st = os.stat(first.path)
    assert _record(first.path) == legacy | {"stat": {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}}


def test_a_record_from_before_stat_stamps_does_not_vouch_for_a_same_size_corruption(tlc_dir, tmp_path, caplog):
    cache = MonthCache(tmp_path / "cache")
    plan = FaultPlan()
    with faulty_file_server(stage_tlc_tree(tlc_dir, tmp_path / "site"), plan) as base_url:
        first = _get(base_url, cache)
        Path(f"{first.path}.json").write_text(json.dumps({k: v for k, v in _record(first.path).items() if k != "stat"}))
        _flip_middle_bytes(Path(first.path))
        second = _get(base_url, cache)
    assert plan.hits == {NAME: 2}
    assert _sha256(second.path) == _sha256(tlc_dir / NAME) == second.sha256
    assert f"cached {first.path}: sha256" in caplog.text


def test_a_corrupted_copy_is_not_served_when_its_source_is_unreachable(tlc_dir, tmp_path, caplog):
    cache = MonthCache(tmp_path / "cache")
    with faulty_file_server(stage_tlc_tree(tlc_dir, tmp_path / "site"), FaultPlan()) as base_url:
        first = _get(base_url, cache)
    _flip_middle_bytes(Path(first.path))
    with pytest.raises(
        DownloadError, match=r"green 2023-01: giving up after 2 attempts: http://127\.0\.0\.1:\d+/trip-data/green_tripdata_2023-01\.parquet: ConnectError"
    ):
        _get(base_url, cache, policy=RetryPolicy(retries=1, backoff_s=0.01))
    assert f"cached {first.path}: sha256" in caplog.text and "not using it (removed)" in caplog.text
    assert _cache_files(cache) == [], "a copy that failed verification must not stay to be trusted later"


def test_listing_leaves_out_a_corrupted_month(tlc_dir, tmp_path, caplog):
    cache = MonthCache(tmp_path / "cache")
    with faulty_file_server(stage_tlc_tree(tlc_dir, tmp_path / "site"), FaultPlan()) as base_url:
        kept = _get(base_url, cache, month="2023-01")
        damaged = _get(base_url, cache, month="2023-02")
    before = os.stat(damaged.path)
    _flip_middle_bytes(Path(damaged.path))
    os.utime(damaged.path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert cache.entries() == [kept]
    assert f"cached {damaged.path}: sha256" in caplog.text
