"""`taxiflow data ...`: fetch months into the cache, list the cache."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from taxiflow.core.errors import TaxiflowError
from taxiflow.core.months import Month
from taxiflow.core.schema import layout_for
from taxiflow.io.month_cache import MonthCache, TripFile
from taxiflow.io.sources import MonthSource
from taxiflow.io.trip_files import get_month_file


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
