"""Getting a month: local files, and downloads from a real local HTTP server standing in for the TLC."""

import http.server

import pytest

from taxiflow.core.errors import DataFileError, DownloadError, MonthNotAvailableError
from taxiflow.io.trip_files import file_sha256, get_month_file
from tests.support.servers import file_server, stage_tlc_tree

NAME = "green_tripdata_2023-01.parquet"


def test_local_file_is_verified_and_digested(tlc_dir):
    trip_file = get_month_file("green", "2023-01", data_dir=tlc_dir, base_url=None, timeout_s=5)
    assert trip_file.origin == "local"
    assert trip_file.num_rows == 68_211
    assert trip_file.sha256.startswith("9f0e03dd7f8f94ec")


def test_missing_month_is_downloaded_atomically(tlc_dir, tmp_path):
    with file_server(stage_tlc_tree(tlc_dir, tmp_path / "site")) as base_url:
        data_dir = tmp_path / "data"
        trip_file = get_month_file("green", "2023-01", data_dir=data_dir, base_url=base_url, timeout_s=10)
    assert trip_file.origin == base_url + NAME
    assert file_sha256(data_dir / NAME) == file_sha256(tlc_dir / NAME)
    assert sorted(p.name for p in data_dir.iterdir()) == [NAME]


def test_unpublished_month_names_type_month_and_url(tlc_dir, tmp_path):
    with file_server(stage_tlc_tree(tlc_dir, tmp_path / "site")) as base_url:
        with pytest.raises(MonthNotAvailableError, match=r"green 2031-07 is not published: .*green_tripdata_2031-07\.parquet answered HTTP 404"):
            get_month_file("green", "2031-07", data_dir=tmp_path / "data", base_url=base_url, timeout_s=5)
    assert not any((tmp_path / "data").iterdir())


def test_missing_month_without_downloads(tmp_path):
    with pytest.raises(MonthNotAvailableError, match="not found and downloads are disabled"):
        get_month_file("green", "2023-01", data_dir=tmp_path, base_url=None, timeout_s=5)


def test_html_error_page_is_not_kept(tmp_path):
    site = tmp_path / "site" / "trip-data"
    site.mkdir(parents=True)
    (site / NAME).write_text("<html><body>Service temporarily unavailable</body></html>")
    with file_server(tmp_path / "site") as base_url:
        with pytest.raises(DataFileError, match=r"green_tripdata_2023-01\.parquet \(downloaded\): not a readable parquet file"):
            get_month_file("green", "2023-01", data_dir=tmp_path / "data", base_url=base_url, timeout_s=5)
    assert not any((tmp_path / "data").iterdir()), "no partial or invalid file may remain"


class _TruncatingHandler(http.server.SimpleHTTPRequestHandler):
    """Promises the whole file, sends half of it, closes the connection."""

    def do_GET(self):
        body = (self.directory and open(f"{self.directory}/trip-data/{NAME}", "rb").read())
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_truncated_body_is_a_retryable_error_and_leaves_nothing(tlc_dir, tmp_path):
    with file_server(stage_tlc_tree(tlc_dir, tmp_path / "site"), handler=_TruncatingHandler) as base_url:
        with pytest.raises(DownloadError, match="downloading .*green_tripdata_2023-01.parquet"):
            get_month_file("green", "2023-01", data_dir=tmp_path / "data", base_url=base_url, timeout_s=5)
    assert not any((tmp_path / "data").iterdir())
