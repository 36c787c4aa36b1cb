"""Large months made of real trips: rows of a real green month sampled with replacement.

Deterministic (fixed seed per file), nothing invented: every row, with all its columns and the
file's original parquet schema, is a real trip (timestamps included). Samples are written once to
benchmarks/data/samples/ and linked under TLC names into one directory per pair, with the TLC's
zone lookup next to them (as in a real data directory).

Resampled rows repeat: 3.29M kept rows drawn from 65,946 trips hold only ~40k distinct model inputs.
The non-repeating variant (`--non-repeating`) takes the same samples and multiplies each row's
`trip_distance` by U(0.8, 1.2), rounded to 0.01 mile (fixed seed), so ~17% of training rows are
distinct inputs, as in a real month of that size, rather than ~1.2%.

    python -m benchmarks.make_data --train-rows 3400000 --val-rows 1000000 [--non-repeating]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.pairs import DATA_DIR, TRAIN_MONTH, VAL_MONTH, Pair, shared_tlc_dir, tlc_name

SEED = 20230301
JITTER_SEED = 20230302
JITTER = (0.8, 1.2)  # trip_distance multiplied by U(0.8, 1.2) per row, in the non-repeating pair
ZONE_LOOKUP = "taxi_zone_lookup.csv"


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


def jitter_distance(table: pa.Table, seed: list[int]) -> pa.Table:
    """`trip_distance` of every row multiplied by U(0.8, 1.2) and rounded to 0.01 mile; all else (schema included) unchanged."""
    index = table.schema.get_field_index("trip_distance")
    field = table.schema.field(index)
    distance = table.column(index).to_numpy(zero_copy_only=False)  # float64; nulls (none in green 2023) become NaN
    factor = np.random.default_rng(seed).uniform(*JITTER, size=table.num_rows)
    jittered = pa.array(np.round(distance * factor, 2), type=field.type, mask=table.column(index).is_null().to_numpy(zero_copy_only=False))
    return table.set_column(index, field, jittered)


def non_repeating(sample: Path, target: Path) -> Path:
    """`sample` with `jitter_distance` applied (seeded by the sample's name); kept if already written."""
    if target.is_file() and pq.ParquetFile(target).metadata.num_rows == pq.ParquetFile(sample).metadata.num_rows:
        return target
    table = jitter_distance(pq.read_table(sample), [JITTER_SEED, sum(sample.name.encode())])
    partial = target.with_suffix(".partial")
    pq.write_table(table, partial)
    os.replace(partial, target)
    return target


def _link(sample: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(sample, link.parent))


def resampled_pair(train_rows: int, val_rows: int, *, source_dir: Path | None = None, name: str | None = None, non_repeating_rows: bool = False) -> Pair:
    """A pair of `train_rows` trips from green 2023-01 and `val_rows` from 2023-02, under TLC names.

    `non_repeating_rows`: the same samples with `jitter_distance` applied (see the module docstring).
    """
    source_dir = source_dir or shared_tlc_dir()
    suffix = "-nonrep" if non_repeating_rows else ""
    pair = Pair(name or f"{train_rows}x{val_rows}{suffix}", DATA_DIR / "pairs" / f"{train_rows}x{val_rows}{suffix}")
    for month, rows, link in ((TRAIN_MONTH, train_rows, pair.train), (VAL_MONTH, val_rows, pair.val)):
        source = source_dir / tlc_name(month)
        sample = resample(source, rows, DATA_DIR / "samples" / f"{source.stem}-{rows}.parquet")
        if non_repeating_rows:
            sample = non_repeating(sample, DATA_DIR / "samples" / f"{source.stem}-{rows}-nonrep.parquet")
        _link(sample, link)
    if (source_dir / ZONE_LOOKUP).is_file():
        _link(source_dir / ZONE_LOOKUP, pair.directory / ZONE_LOOKUP)
    return pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, required=True)
    parser.add_argument("--val-rows", type=int, required=True)
    parser.add_argument("--non-repeating", action="store_true", help="trip_distance x U(0.8, 1.2), rounded to 0.01 mile, per row")
    args = parser.parse_args()
    pair = resampled_pair(args.train_rows, args.val_rows, non_repeating_rows=args.non_repeating)
    print(pair.directory)


if __name__ == "__main__":
    main()
