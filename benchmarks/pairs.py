"""Where the benchmark's months are: the real TLC pair, and resampled pairs under benchmarks/data/."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "benchmarks" / "data"
TRAIN_MONTH, VAL_MONTH = "2023-01", "2023-02"


def shared_tlc_dir() -> Path:
    return Path(os.environ.get("TAXIFLOW_TEST_DATA", REPO.parent / "shared" / "data" / "nyc-tlc")).resolve()


def tlc_name(month: str) -> str:
    return f"green_tripdata_{month}.parquet"


def tlc_month(path: Path) -> str:
    """`.../green_tripdata_2023-01.parquet` -> `2023-01`."""
    return path.stem.rsplit("_", 1)[-1]


@dataclass(frozen=True)
class Pair:
    """A training month and a later validation month, TLC-named, in one directory."""

    name: str
    directory: Path

    @property
    def train(self) -> Path:
        return self.directory / tlc_name(TRAIN_MONTH)

    @property
    def val(self) -> Path:
        return self.directory / tlc_name(VAL_MONTH)


def real_pair() -> Pair:
    return Pair("real", shared_tlc_dir())
