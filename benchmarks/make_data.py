"""Large months made of real trips: rows of a real green month sampled with replacement.

Deterministic (fixed seed per file), nothing invented: every row, with all its columns and the
file's original parquet schema, is a real trip (timestamps included). Samples are written once to
benchmarks/data/samples/ and linked under TLC names into one directory per pair.

    python -m benchmarks.make_data --train-rows 3400000 --val-rows 1000000
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from benchmarks.pairs import DATA_DIR, TRAIN_MONTH, VAL_MONTH, Pair, shared_tlc_dir, tlc_name

SEED = 20230301


def resample(source: Path, rows: int, target: Path) -> Path:
    """`rows` rows of `source`, drawn uniformly with replacement; kept if already written."""
    if target.is_file() and pq.ParquetFile(target).metadata.num_rows == rows:
        return target
    table = pq.read_table(source)
    # Seeded by the file and the size, so each sample is reproducible on its own.
    rng = np.random.default_rng([SEED, rows, sum(source.name.encode())])
    sample = table.take(rng.integers(0, table.num_rows, size=rows))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    pq.write_table(sample, partial)
    os.replace(partial, target)
    return target


def _link(sample: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(sample, link.parent))


def resampled_pair(train_rows: int, val_rows: int, *, source_dir: Path | None = None, name: str | None = None) -> Pair:
    """A pair of `train_rows` trips from green 2023-01 and `val_rows` from 2023-02, under TLC names."""
    source_dir = source_dir or shared_tlc_dir()
    pair = Pair(name or f"{train_rows}x{val_rows}", DATA_DIR / "pairs" / f"{train_rows}x{val_rows}")
    for month, rows, link in ((TRAIN_MONTH, train_rows, pair.train), (VAL_MONTH, val_rows, pair.val)):
        source = source_dir / tlc_name(month)
        sample = resample(source, rows, DATA_DIR / "samples" / f"{source.stem}-{rows}.parquet")
        _link(sample, link)
    return pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, required=True)
    parser.add_argument("--val-rows", type=int, required=True)
    args = parser.parse_args()
    pair = resampled_pair(args.train_rows, args.val_rows)
    print(pair.directory)


if __name__ == "__main__":
    main()
