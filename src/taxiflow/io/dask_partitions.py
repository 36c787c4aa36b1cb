"""A training range's months as partitions on a Dask cluster: each month read, prepared (through the
prepared-trips cache), counted and encoded on a worker; only small results reach this process.

Memory: a worker holds the month it is preparing, then the zone codes of its months (a few float32
columns per distinct row) until the fit ends; this process holds none of the training rows. With
more months than workers, a worker prepares one month at a time (one thread each), so what is in
flight is bounded by the workers, not by the range.

The vocabulary is fitted from the months' category counts merged (`core.features.merge_category_counts`):
the one fitted on all their rows together. Each month's codes are then split evenly across the
workers, so that every worker fits a share of every month, as xgboost.dask expects.
Workers read the month files at the paths this run resolved: this machine, or a filesystem they share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from taxiflow.core.errors import InvalidArgumentError
from taxiflow.core.features import CategoryCounts, FeatureVocabulary, ZoneCodeMatrix, count_categories, merge_category_counts, zone_code_layout
from taxiflow.core.preparation import PreparedTrips
from taxiflow.core.training import DaskCodes
from taxiflow.core.training_plan import TrainingPlan, fit_code_matrix, plan_vocabulary_from_counts
from taxiflow.io.month_cache import TripFile
from taxiflow.io.prepared_months import prepare_trip_file


@dataclass(frozen=True)
class PartitionFacts:
    """What this process learns of a month prepared on a worker."""

    month: str
    rows_read: int
    rows_kept: int
    dropped: dict[str, int]
    from_cache: bool
    counts: CategoryCounts


@dataclass(frozen=True)
class MonthsOnCluster:
    """The encoded training rows on the workers, and what they were encoded with."""

    months: list[PartitionFacts]
    vocabulary: FeatureVocabulary
    left_out: dict[str, np.ndarray]
    codes: DaskCodes


# On the workers: module-level functions, so that they travel by name, not by pickled code.
def _prepare(trip_file: TripFile, features: tuple[str, ...], month_window_days: int | None, prepared_dir: str, refresh: bool) -> tuple[PreparedTrips, bool]:
    prepared, hit, _ = prepare_trip_file(trip_file, features, month_window_days, prepared_dir, refresh)
    return prepared, hit


def _facts(prepared: tuple[PreparedTrips, bool], month: str, features: tuple[str, ...]) -> PartitionFacts:
    trips, hit = prepared
    return PartitionFacts(month, trips.rows_read, trips.rows_kept, dict(trips.dropped), hit, count_categories(trips.frame, features))


def _encode(prepared: tuple[PreparedTrips, bool], plan: TrainingPlan, vocabulary: FeatureVocabulary, left_out: dict[str, np.ndarray]) -> ZoneCodeMatrix:
    codes = fit_code_matrix(plan, prepared[0], vocabulary, left_out)
    if codes is None:
        raise InvalidArgumentError("engine dask fits on zone codes: the feature columns must hold no nulls (fit with engine local)")
    return codes


def _share(codes: ZoneCodeMatrix, index: int, shares: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    bounds = np.linspace(0, codes.rows, shares + 1).astype(int)
    rows = slice(bounds[index], bounds[index + 1])
    # Copies, not views: a view would keep the whole month's codes alive on the worker that encoded it.
    # float32 is what XGBoost stores labels and weights in: the same values as a float64 array given to it.
    return codes.X[rows].copy(), codes.target[rows].astype(np.float32), None if codes.weight is None else codes.weight[rows].astype(np.float32)


def _item(share: tuple, index: int) -> np.ndarray:
    return share[index]


def _size(codes: ZoneCodeMatrix) -> tuple[int, int, bool]:
    return codes.rows, codes.max_code, codes.weight is not None


def place_training_months(client, plan: TrainingPlan, train_files: list[TripFile], prepared_dir: str, refresh: bool) -> MonthsOnCluster:
    """Prepare, count and encode `train_files` on `client`'s workers; the rows stay there, spread over all of them."""
    import dask.array as da

    workers = sorted(client.scheduler_info()["workers"])
    prepared = [
        client.submit(_prepare, f, plan.features, plan.month_window_days, prepared_dir, refresh, key=f"prepare-{f.taxi}-{f.month}-{f.sha256[:12]}", pure=False)
        for f in train_files
    ]
    months = client.gather([client.submit(_facts, p, f.month, plan.features, pure=False) for p, f in zip(prepared, train_files, strict=True)])
    counts = merge_category_counts([m.counts for m in months])
    vocabulary, left_out = plan_vocabulary_from_counts(plan, counts)
    encoded = [client.submit(_encode, p, plan, vocabulary, left_out, pure=False) for p in prepared]
    del prepared  # a month's prepared rows are released once encoded
    sizes = client.gather([client.submit(_size, e, pure=False) for e in encoded])
    X, y, weight = [], [], []
    for codes, (rows, _, weighted) in zip(encoded, sizes, strict=True):
        bounds = np.linspace(0, rows, len(workers) + 1).astype(int)
        for i, worker in enumerate(workers):
            n = int(bounds[i + 1] - bounds[i])
            if n == 0:
                continue
            # Each share is pinned to its worker: the codes move once, the prepared rows never.
            share = client.submit(_share, codes, i, len(workers), workers=[worker], allow_other_workers=False, pure=False)
            parts = [client.submit(_item, share, k, workers=[worker], allow_other_workers=False, pure=False) for k in range(3 if weighted else 2)]
            X.append(da.from_delayed(parts[0], shape=(n, len(vocabulary._row_order)), dtype=np.float32))
            y.append(da.from_delayed(parts[1], shape=(n,), dtype=np.float32))
            if weighted:
                weight.append(da.from_delayed(parts[2], shape=(n,), dtype=np.float32))
    del encoded  # each month's whole codes are released once its shares exist
    if not X:
        raise InvalidArgumentError(f"no training rows in {', '.join(f.month for f in train_files)}")
    return MonthsOnCluster(
        months=months,
        vocabulary=vocabulary,
        left_out=left_out,
        codes=DaskCodes(
            X=da.concatenate(X),
            y=da.concatenate(y),
            weight=da.concatenate(weight) if weight else None,
            layout=zone_code_layout(vocabulary),
            max_code=max(max_code for _, max_code, _ in sizes),
        ),
    )
