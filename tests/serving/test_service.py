"""The prediction service, through `taxiflow serve`, against a real tracking server with trained versions."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

import httpx
import mlflow.pyfunc
import numpy as np
import polars as pl
import pytest

from taxiflow.io.model_store import MlflowModelStore, RestModelStore
from tests.serving.conftest import MODEL, Registry, running_service
from tests.support.servers import VENV_BIN, base_env, wait_for

pytestmark = pytest.mark.servers
RIDE = {"PULocationID": 74, "DOLocationID": 75, "trip_distance": 2.5}
TOKEN = "test-admin-token"


def _real_rides(tlc_dir: Path, month: str = "2023-03") -> pl.DataFrame:
    """A real month's rides as a client sends them: every row with the three inputs present and in range."""
    frame = pl.read_parquet(tlc_dir / f"green_tripdata_{month}.parquet", columns=["PULocationID", "DOLocationID", "trip_distance"])
    return frame.drop_nulls().filter(pl.col("trip_distance").is_between(0, 10_000) & pl.col("PULocationID").is_between(1, 265))


def _pyfunc_predictions(registry: Registry, version: str, rides: pl.DataFrame) -> np.ndarray:
    mlflow.set_tracking_uri(registry.uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}")
    return np.asarray(model.predict(rides.to_pandas()), dtype=np.float32)


def _served_predictions(service, rides: pl.DataFrame, batch: int = 10_000) -> tuple[np.ndarray, set[str]]:
    out, versions = [], set()
    for start in range(0, rides.height, batch):
        response = service.predict(rides.slice(start, batch).to_dicts())
        assert response.status_code == 200, response.text
        out.append(np.asarray(response.json()["predictions"], dtype=np.float32))
        versions.add(response.json()["model_version"])
    return np.concatenate(out), versions


def test_predictions_equal_the_registered_pyfunc_on_a_real_month(registry, tlc_dir, tmp_path):
    registry.set_champion("1")
    rides = _real_rides(tlc_dir)
    with running_service(registry, tmp_path) as service:
        wait_for(lambda: service.get("/ready").status_code == 200, timeout_s=60, what="the service to load the champion")
        served, versions = _served_predictions(service, rides)
        one = service.predict(RIDE | {"ride_id": "abc"}).json()
        model = service.get("/model").json()
    assert versions == {"1"}
    # Same features code and same trees: equal to the last bit, on every ride of the month.
    np.testing.assert_array_equal(served, _pyfunc_predictions(registry, "1", rides))
    assert rides.height > 60_000
    assert one["ride_id"] == "abc" and one["model_version"] == "1"
    assert np.float32(one["prediction"]) == _pyfunc_predictions(registry, "1", pl.DataFrame([RIDE]))[0]
    assert model["model"]["version"] == "1" and model["model"]["train_month"] == "2023-01" and model["model"]["val_month"] == "2023-02"
    assert model["model"]["rmse"] == pytest.approx(float(registry.client().get_model_version(MODEL, "1").tags["rmse"]))
    assert model["refused"] is None and model["model"]["loaded_at"]


def test_both_ways_of_reading_the_registry_agree(registry, tmp_path):
    """The service reads a tracking server over REST (no MLflow import); other URIs go through MLflow."""
    registry.set_champion("2")
    rest, through_mlflow = RestModelStore(registry.uri, MODEL), MlflowModelStore(registry.uri, MODEL)
    assert rest.version_for_alias("champion") == through_mlflow.version_for_alias("champion")
    assert rest.version_for_alias("no-such-alias") is None and through_mlflow.version_for_alias("no-such-alias") is None
    a, b = rest.download_bundle("2", tmp_path / "rest"), through_mlflow.download_bundle("2", tmp_path / "mlflow")
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir()) and "linear_model.json" in files
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


GOOD = b'{"PULocationID": 74, "DOLocationID": 75, "trip_distance": 2.5}'
BAD_INPUT = [
    # (body as bytes, content type, status, what the message must say)
    (b'{"PULocationID": 74, "trip_distance": 2.5}', "application/json", 422, "DOLocationID: Field required"),
    (b"[" + GOOD + b', {"PULocationID": "74", "DOLocationID": 75, "trip_distance": 1}]', "application/json", 422, "ride 1: PULocationID"),
    (b"[" + GOOD + b', {"PULocationID": 74, "DOLocationID": 266, "trip_distance": 1}]', "application/json", 422, "ride 1: DOLocationID: Input should be less"),
    (b'{"PULocationID": 0, "DOLocationID": 75, "trip_distance": 2.5}', "application/json", 422, "PULocationID: Input should be greater than or equal to 1"),
    (b'{"PULocationID": 74, "DOLocationID": 75, "trip_distance": -0.5}', "application/json", 422, "trip_distance: Input should be greater than or equal to 0"),
    (b'{"PULocationID": 74, "DOLocationID": 75, "trip_distance": NaN}', "application/json", 422, "trip_distance: Input should be a finite number"),
    (b'{"PULocationID": 74, "DOLocationID": 75, "trip_distance": "2.5"}', "application/json", 422, "trip_distance: Input should be a valid number"),
    (b'{"PULocationID": 74.5, "DOLocationID": 75, "trip_distance": 2.5}', "application/json", 422, "PULocationID: Input should be a multiple of 1"),
    (b"[]", "application/json", 422, "at least 1 item"),
    (b"[" + b",".join([GOOD] * 51) + b"]", "application/json", 422, "at most 50 items"),
    (b'{"PULocationID": 74, "DOLocationID": 75, "trip_distance": 2.5', "application/json", 400, "not valid JSON"),
    (b'"a ride"', "application/json", 422, "got a JSON str"),
    (b"PULocationID=74", "application/x-www-form-urlencoded", 415, "content type must be application/json"),
    (b'{"PULocationID": 74, "DOLocationID": 75, "trip_distance": 2.5}', "text/plain", 415, "content type must be application/json"),
    (b'{"pad": "' + b"x" * 9000 + b'"}', "application/json", 413, "over the limit of 8192"),
]


def test_bad_input_is_a_4xx_naming_the_ride_and_the_field(registry, tmp_path):
    registry.set_champion("1")
    with running_service(registry, tmp_path, "--max-rides", "50", "--max-body-bytes", "8192") as service:
        wait_for(lambda: service.get("/ready").status_code == 200, timeout_s=60, what="the service to load the champion")
        for body, content_type, status, message in BAD_INPUT:
            response = httpx.post(f"{service.url}/predict", content=body, headers={"content-type": content_type}, timeout=10)
            assert (response.status_code, message in response.json()["detail"]) == (status, True), (body[:120], response.text[:300])
        # A chunked body (no Content-Length) over the limit is cut off as it arrives.
        chunks = iter([b'{"pad": "', b"x" * 5000, b"x" * 5000, b'"}'])
        response = httpx.post(f"{service.url}/predict", content=chunks, headers={"content-type": "application/json"}, timeout=10)
        assert response.status_code == 413 and "over the limit" in response.json()["detail"]
        # Without a token in the environment the admin endpoint does not exist.
        assert httpx.post(f"{service.url}/admin/reload", headers={"authorization": "Bearer x"}).status_code == 404
        assert service.predict(RIDE).status_code == 200  # still serving
        log = service.log.read_text()
    assert "Traceback" not in log and "Exception in ASGI" not in log


def test_schemathesis_finds_no_server_error_and_no_schema_violation(registry, tmp_path):
    """Fuzz every operation from the service's own OpenAPI schema: all of schemathesis's checks, fixed seed."""
    registry.set_champion("1")
    with running_service(registry, tmp_path, "--max-rides", "50", env={"TAXIFLOW_SERVE_ADMIN_TOKEN": TOKEN}) as service:
        wait_for(lambda: service.get("/ready").status_code == 200, timeout_s=60, what="the service to load the champion")
        result = subprocess.run(
            [
                str(VENV_BIN / "st"),
                "run",
                f"{service.url}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                "150",
                "--seed",
                "1",
                "-H",
                f"Authorization: Bearer {TOKEN}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,  # schemathesis keeps its examples database in the working directory
        )
        log = service.log.read_text()
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    assert " passed" in summary and "generated" in summary
    assert "Exception in ASGI" not in log and "Traceback" not in log, log[-3000:]


def test_an_alias_move_is_hot_swapped_under_concurrent_requests(registry, tlc_dir, tmp_path):
    registry.set_champion("1")
    sample = _real_rides(tlc_dir).head(200)
    stop = threading.Event()
    seen: list[list[tuple[int, str]]] = [[] for _ in range(4)]

    def client(i: int, url: str) -> None:
        body = RIDE if i % 2 == 0 else sample.to_dicts()
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                response = http.post(f"{url}/predict", json=body)
                seen[i].append((response.status_code, response.json().get("model_version", response.text)))

    with running_service(registry, tmp_path, "--poll-s", "0.3") as service:
        wait_for(lambda: service.get("/ready").status_code == 200, timeout_s=60, what="the service to load the champion")
        threads = [threading.Thread(target=client, args=(i, service.url)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        registry.set_champion("2")
        wait_for(lambda: service.get("/model").json()["model"]["version"] == "2", timeout_s=30, what="the service to swap in v2")
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        served, versions = _served_predictions(service, sample)
    for answers in seen:
        assert answers and all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
        versions_in_order = [v for _, v in answers]
        # Each client sees v1 then v2, never back: the swap is one atomic switch.
        assert versions_in_order[0] == "1" and versions_in_order[-1] == "2"
        assert versions_in_order == sorted(versions_in_order), "a request was answered by v1 after v2"
    assert versions == {"2"}
    np.testing.assert_array_equal(served, _pyfunc_predictions(registry, "2", sample))


def _break_version_files(registry: Registry, version: str) -> None:
    """Corrupt the version's model file where the tracking server stores it (a bad upload, a broken disk)."""
    download_uri = registry.client().get_model_version_download_uri(MODEL, version)
    relative = download_uri.removeprefix("mlflow-artifacts:/").strip("/")
    model_file = registry.root / "artifacts" / relative / "artifacts" / "bundle" / "linear_model.json"
    assert model_file.is_file(), model_file
    model_file.write_text('{"intercept": 1.0, "coef": "not a list"}')


def test_a_broken_version_is_refused_and_the_old_one_keeps_serving(registry, tmp_path):
    registry.set_champion("2")
    _break_version_files(registry, "3")
    with running_service(registry, tmp_path, "--poll-s", "0.3", env={"TAXIFLOW_SERVE_ADMIN_TOKEN": TOKEN}) as service:
        wait_for(lambda: service.get("/ready").status_code == 200, timeout_s=60, what="the service to load the champion")
        before = service.predict(RIDE).json()
        registry.set_champion("3")
        refused = wait_for(lambda: (m := service.get("/model").json())["refused"] and m, timeout_s=30, what="the service to refuse v3")
        assert refused["refused"]["version"] == "3" and refused["refused"]["reason"]
        assert refused["model"]["version"] == "2" and refused["alias_version"] == "3"
        after = service.predict(RIDE).json()
        assert after == before  # v2 still answers, unchanged
        assert service.get("/ready").status_code == 200
        # The admin reload needs the token, and refuses the broken version again.
        assert httpx.post(f"{service.url}/admin/reload").status_code == 401
        assert httpx.post(f"{service.url}/admin/reload", headers={"authorization": "Bearer wrong"}).status_code == 401
        reload = httpx.post(f"{service.url}/admin/reload", headers={"authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert reload.status_code == 200 and reload.json()["outcome"].startswith("v3 refused")
        # The alias comes back to the version serving: the refusal is history, not the state.
        registry.set_champion("2")
        wait_for(lambda: service.get("/model").json()["refused"] is None, timeout_s=30, what="the refusal to clear")
        assert service.get("/model").json()["alias_version"] == "2"
        # The alias moves back to a good version: it is followed again.
        registry.set_champion("1")
        wait_for(lambda: service.get("/model").json()["model"]["version"] == "1", timeout_s=30, what="the service to load v1")
        assert service.get("/model").json()["refused"] is None
        # The alias removed (by mistake): the last good model keeps serving, and /model says the alias is gone.
        registry.client().delete_registered_model_alias(MODEL, "champion")
        wait_for(lambda: service.get("/model").json()["alias_version"] is None, timeout_s=30, what="the service to see the alias gone")
        assert service.predict(RIDE).json()["model_version"] == "1" and service.get("/ready").status_code == 200
        log = service.log.read_text()
    assert "v3 refused, keeping v2" in log and TOKEN not in log


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "70000"], {}, r"--port: expected an integer in 0\.\.65535, got 70000"),
        (["--poll-s", "0"], {}, r"--poll-s: expected a number > 0, got 0\.0"),
        (["--max-body-bytes", "10"], {}, r"--max-body-bytes: expected an integer >= 1024, got 10"),
        # The same limits hold for the environment: one clear line, not pydantic's traceback.
        ([], {"TAXIFLOW_SERVE_MAX_RIDES": "0"}, r"bad setting in the environment: TAXIFLOW_SERVE_MAX_RIDES='0': Input should be greater than or equal to 1"),
    ],
)
def test_bad_options_are_refused_before_the_service_starts(args, env, message, tmp_path):
    result = subprocess.run(
        [str(VENV_BIN / "taxiflow"), "serve", *args],
        env=base_env(TAXIFLOW_STATE_DIR=str(tmp_path / "state"), **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and re.fullmatch("taxiflow: error: " + message + r"\n", result.stderr), result.stderr[-2000:]
    assert not (tmp_path / "state").exists()
