"""`taxiflow data ...`: fetch months into the cache, list the cache, load months into PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from taxiflow.core.errors import TaxiflowError
from taxiflow.core.months import Month
from taxiflow.core.schema import layout_for
from taxiflow.io.month_cache import MonthCache, TripFile
from taxiflow.io.sources import MonthSource
from taxiflow.io.trip_files import get_month_file

if TYPE_CHECKING:
    from taxiflow.io.trips_sql import MonthLoad


@dataclass(frozen=True)
class FetchOutcome:
    month: str
    file: TripFile | None
    error: str | None


def fetch_months(taxi: str, months: list[Month], source: MonthSource, cache: MonthCache, *, refresh: bool = False, workers: int = 3) -> list[FetchOutcome]:
    """Fetch each month into the cache; a month that fails doesn't stop the others."""
    layout_for(taxi)

    def one(month: Month) -> FetchOutcome:
        try:
            return FetchOutcome(str(month), get_month_file(taxi, str(month), data_dir=None, source=source, cache=cache, refresh=refresh), None)
        except TaxiflowError as exc:
            return FetchOutcome(str(month), None, str(exc))

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(months)))) as pool:
        return list(pool.map(one, months))


@dataclass(frozen=True)
class LoadOutcome:
    month: str
    load: MonthLoad | None
    error: str | None


def load_months_into_sql(
    url: str, taxi: str, months: list[Month], *, data_dir: Path | None, source: MonthSource | None, cache: MonthCache
) -> list[LoadOutcome]:
    """Load each month (from the data dir, else the source through the cache) into PostgreSQL, one transaction each.

    A month that fails keeps what it held before and doesn't stop the others.
    """
    from taxiflow.io.trips_sql import load_months

    outcomes = []
    for month in months:
        try:
            trip_file = get_month_file(taxi, str(month), data_dir=data_dir, source=source, cache=cache)
            (load,) = load_months(url, taxi, [trip_file])
            outcomes.append(LoadOutcome(str(month), load, None))
        except TaxiflowError as exc:
            outcomes.append(LoadOutcome(str(month), None, str(exc)))
    return outcomes
