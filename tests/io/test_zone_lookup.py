"""The zone lookup from a data directory, or downloaded from a real local server laid out like the TLC's site."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from taxiflow.core.errors import DataFileError, DownloadError, MonthNotAvailableError
from taxiflow.io.sources import HttpSource, RetryPolicy
from taxiflow.io.zone_lookup import ZONE_LOOKUP_NAME, get_zone_lookup, read_zone_boroughs, zone_lookup_url
from tests.support.servers import FaultPlan, faulty_file_server, stage_tlc_tree

FAST = RetryPolicy(retries=3, backoff_s=0.01, max_backoff_s=0.05)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _site(tlc_dir: Path, root: Path, lookup: bytes | None = None) -> Path:
    """The TLC's layout: `trip-data/<months>` and `misc/taxi_zone_lookup.csv` (the real one unless `lookup` is given)."""
    stage_tlc_tree(tlc_dir, root)
    misc = root / "misc"
    misc.mkdir(exist_ok=True)
    if lookup is None:
        (misc / ZONE_LOOKUP_NAME).symlink_to(tlc_dir / ZONE_LOOKUP_NAME)
    else:
        (misc / ZONE_LOOKUP_NAME).write_bytes(lookup)
    return root


def _get(base_url: str, cache_root: Path, data_dir: Path | None = None, **kwargs):
    source = HttpSource(base_url, timeout_s=2.0, policy=FAST, progress=False)
    return get_zone_lookup(data_dir=data_dir, source=source, cache_root=cache_root, **kwargs)


def _cache_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock")) if root.exists() else []


def _expected_boroughs(tlc_dir: Path) -> dict[int, str]:
    # pandas, independently; keep_default_na=False keeps zone 265's literal "N/A".
    frame = pd.read_csv(tlc_dir / ZONE_LOOKUP_NAME, keep_default_na=False)
    return dict(zip(frame["LocationID"].tolist(), frame["Borough"].tolist(), strict=True))


def _boroughs_of(lookup, zone_ids) -> dict[int, str]:
    codes = lookup.boroughs.borough_codes(np.asarray(zone_ids))
    return {int(z): lookup.boroughs.names[c] for z, c in zip(zone_ids, codes, strict=True)}


def test_url_is_under_misc_next_to_trip_data():
    assert zone_lookup_url("https://d37ci6vzurychx.cloudfront.net/trip-data/") == "https://d37ci6vzurychx.cloudfront.net/misc/taxi_zone_lookup.csv"
    assert zone_lookup_url("http://127.0.0.1:8000/trip-data") == "http://127.0.0.1:8000/misc/taxi_zone_lookup.csv"


def test_data_dir_copy_is_read_in_place_without_a_source(tlc_dir, tmp_path):
    lookup = get_zone_lookup(data_dir=tlc_dir, source=None, cache_root=tmp_path / "cache")
    assert (lookup.path, lookup.origin) == (str(tlc_dir / ZONE_LOOKUP_NAME), "local")
    assert lookup.sha256 == _sha256(tlc_dir / ZONE_LOOKUP_NAME) and lookup.sha256.startswith("1a99e10509223")
    expected = _expected_boroughs(tlc_dir)
    assert _boroughs_of(lookup, list(expected)) == expected
    assert _cache_files(tmp_path / "cache") == []


def test_download_is_cached_and_a_second_call_needs_no_network(tlc_dir, tmp_path):
    plan = FaultPlan()
    cache_root = tmp_path / "cache"
    empty = tmp_path / "data"
    empty.mkdir()
    with faulty_file_server(_site(tlc_dir, tmp_path / "site"), plan) as base_url:
        first = _get(base_url, cache_root, data_dir=empty)
    assert first.origin == base_url.replace("/trip-data/", "/misc/") + ZONE_LOOKUP_NAME
    assert Path(first.path).read_bytes() == (tlc_dir / ZONE_LOOKUP_NAME).read_bytes()
    assert first.sha256 == _sha256(tlc_dir / ZONE_LOOKUP_NAME)
    expected = _expected_boroughs(tlc_dir)
    assert _boroughs_of(first, list(expected)) == expected
    # The server is gone: only the cache can answer.
    again = _get(base_url, cache_root, data_dir=empty)
    assert (again.path, again.origin, again.sha256) == (first.path, first.origin, first.sha256)
    assert plan.hits == {ZONE_LOOKUP_NAME: 1}
    assert _cache_files(cache_root) == [ZONE_LOOKUP_NAME], "no partial download may remain"


def test_transient_faults_are_retried_with_the_sources_policy(tlc_dir, tmp_path):
    plan = FaultPlan({ZONE_LOOKUP_NAME: ["503", "reset", "truncate"]})
    with faulty_file_server(_site(tlc_dir, tmp_path / "site"), plan) as base_url:
        lookup = _get(base_url, tmp_path / "cache")
    assert plan.hits == {ZONE_LOOKUP_NAME: 4}
    assert lookup.sha256 == _sha256(tlc_dir / ZONE_LOOKUP_NAME)
    assert _cache_files(tmp_path / "cache") == [ZONE_LOOKUP_NAME]


def test_persistent_server_errors_give_up_and_cache_nothing(tlc_dir, tmp_path):
    plan = FaultPlan({ZONE_LOOKUP_NAME: ["always500"]})
    with faulty_file_server(_site(tlc_dir, tmp_path / "site"), plan) as base_url:
        with pytest.raises(DownloadError, match=r"zone lookup file: giving up after 4 attempts: .*misc/taxi_zone_lookup\.csv: HTTP 500"):
            _get(base_url, tmp_path / "cache")
    assert plan.hits == {ZONE_LOOKUP_NAME: 4}
    assert _cache_files(tmp_path / "cache") == []


def test_not_published_is_not_retried(tlc_dir, tmp_path):
    plan = FaultPlan()
    site = stage_tlc_tree(tlc_dir, tmp_path / "site")  # no misc/ directory
    with faulty_file_server(site, plan) as base_url:
        with pytest.raises(MonthNotAvailableError, match=r"zone lookup file is not published: .*/misc/taxi_zone_lookup\.csv answered HTTP 404"):
            _get(base_url, tmp_path / "cache")
    assert plan.hits == {ZONE_LOOKUP_NAME: 1}
    assert _cache_files(tmp_path / "cache") == []


def _bad_bodies(real: bytes) -> dict[str, tuple[bytes, str]]:
    lines = real.split(b"\r\n")
    return {
        "cut-mid-row": (real[:-30], r"column 'Borough' is empty for LocationID 265; expected a borough name"),
        "cut-at-row-end": (b"\r\n".join(lines[:201]) + b"\r\n", r"no row for LocationID 201, 202, 203, 204, 205 \(\+60 more\) \(truncated\?\)"),
        "html-page": (b"<html><body>Access denied</body></html>", r"missing column\(s\) LocationID, Borough; expected a CSV with columns LocationID, Borough"),
        "binary": (bytes(range(256)) * 8, r"missing column\(s\) LocationID, Borough; expected a CSV"),
        "not-utf8": (real.replace(b'"Queens"', b'"Qu\xffeens"', 1), r"not a readable CSV \(ComputeError: invalid utf-8 sequence\)"),
        "header-only": (lines[0] + b"\r\n", r"holds no zones \(0 rows\)"),
        "empty": (b"", r"not a readable CSV \(NoDataError"),
        "no-borough-column": (real.replace(b'"Borough"', b'"Boro"', 1), r"missing column\(s\) Borough; expected a CSV .*found: 'LocationID', 'Boro'"),
        "text-ids": (real.replace(b"\r\n7,", b'\r\n"seven",', 1), r"column 'LocationID' holds 'seven'; expected integer zone IDs"),
    }


@pytest.mark.parametrize("case", ["cut-mid-row", "cut-at-row-end", "html-page", "binary", "not-utf8", "header-only", "empty", "no-borough-column", "text-ids"])
def test_a_bad_download_is_refused_naming_the_file_and_nothing_is_cached(tlc_dir, tmp_path, case):
    body, problem = _bad_bodies((tlc_dir / ZONE_LOOKUP_NAME).read_bytes())[case]
    site = _site(tlc_dir, tmp_path / "site", lookup=body)
    plan = FaultPlan()
    cache_root = tmp_path / "cache"
    with faulty_file_server(site, plan) as base_url:
        with pytest.raises(DataFileError, match=rf"taxi_zone_lookup\.csv from http://127\.0\.0\.1:\d+/misc/taxi_zone_lookup\.csv: ({problem})"):
            _get(base_url, cache_root)
        assert _cache_files(cache_root) == []
        # The TLC fixes the file: the next call downloads it, nothing stale stood in the way.
        (site / "misc" / ZONE_LOOKUP_NAME).write_bytes((tlc_dir / ZONE_LOOKUP_NAME).read_bytes())
        fixed = _get(base_url, cache_root)
    assert fixed.sha256 == _sha256(tlc_dir / ZONE_LOOKUP_NAME)
    assert plan.hits == {ZONE_LOOKUP_NAME: 2}


def test_a_cached_copy_damaged_later_is_downloaded_again(tlc_dir, tmp_path):
    plan = FaultPlan()
    cache_root = tmp_path / "cache"
    with faulty_file_server(_site(tlc_dir, tmp_path / "site"), plan) as base_url:
        first = _get(base_url, cache_root)
        Path(first.path).write_bytes(b"LocationID,Borough\r\n1,EWR\r\n")
        again = _get(base_url, cache_root)
    assert plan.hits == {ZONE_LOOKUP_NAME: 2}
    assert again.sha256 == _sha256(tlc_dir / ZONE_LOOKUP_NAME)
    assert Path(again.path).read_bytes() == (tlc_dir / ZONE_LOOKUP_NAME).read_bytes()


def test_refresh_downloads_again(tlc_dir, tmp_path):
    plan = FaultPlan()
    with faulty_file_server(_site(tlc_dir, tmp_path / "site"), plan) as base_url:
        _get(base_url, tmp_path / "cache")
        _get(base_url, tmp_path / "cache", refresh=True)
    assert plan.hits == {ZONE_LOOKUP_NAME: 2}


def test_a_bad_file_in_the_data_dir_is_an_error_not_a_silent_download(tlc_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / ZONE_LOOKUP_NAME).write_bytes((tlc_dir / ZONE_LOOKUP_NAME).read_bytes()[:500])
    plan = FaultPlan()
    with faulty_file_server(_site(tlc_dir, tmp_path / "site"), plan) as base_url:
        with pytest.raises(DataFileError, match=rf"{data / ZONE_LOOKUP_NAME}: no row for LocationID .*expected every zone 1\.\.265"):
            _get(base_url, tmp_path / "cache", data_dir=data)
    assert plan.hits == {}


def test_nowhere_to_get_it_from(tmp_path):
    with pytest.raises(DataFileError, match=rf"{tmp_path / ZONE_LOOKUP_NAME} not found and no download source is configured"):
        get_zone_lookup(data_dir=tmp_path, source=None, cache_root=tmp_path / "cache")


def test_only_the_needed_columns_must_be_present(tlc_dir, tmp_path):
    # Zone and service_zone are not needed: a file without them still reads.
    frame = pd.read_csv(tlc_dir / ZONE_LOOKUP_NAME, keep_default_na=False)[["Borough", "LocationID"]]
    path = tmp_path / ZONE_LOOKUP_NAME
    frame.to_csv(path, index=False)
    boroughs = read_zone_boroughs(path)
    assert [boroughs.borough_of(z) for z in (1, 4, 264, 265)] == ["EWR", "Manhattan", "Unknown", "N/A"]
