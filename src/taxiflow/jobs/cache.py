"""`taxiflow cache ls|prune`: what the local caches hold (downloaded months, prepared trips) and bounding their size.

Months read in place from the data directory are never cache entries: pruning never touches them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from taxiflow.io.month_cache import MonthCache
from taxiflow.io.prepared_cache import PreparedTripsCache
from taxiflow.settings import TaxiflowSettings


@dataclass(frozen=True)
class CacheItem:
    kind: str  # "month" (a downloaded file) or "prepared" (a month's prepared trips)
    taxi: str
    month: str
    size_bytes: int
    last_used: float  # epoch seconds
    detail: str  # where a month came from; which file a prepared entry was made from
    remove: Callable[[], int]

    def row(self) -> dict[str, object]:
        return {"kind": self.kind, "taxi": self.taxi, "month": self.month, "size_bytes": self.size_bytes, "last_used": self.last_used, "detail": self.detail}


def cache_items(settings: TaxiflowSettings) -> list[CacheItem]:
    """Every entry of both caches, least recently used first."""
    months = MonthCache(settings.cache_dir())
    prepared = PreparedTripsCache(settings.prepared_dir())
    items = [CacheItem("month", e.taxi, e.month, e.size_bytes, months.last_used(e), e.origin, partial(months.remove, e)) for e in months.entries()]
    items += [
        CacheItem("prepared", e.taxi, e.month, e.size_bytes, used, f"from sha256 {e.data_identity[:12]}…", partial(prepared.remove, e.key))
        for e, used in prepared.entries()
    ]
    return sorted(items, key=lambda item: item.last_used)


def choose_evictions(items: list[CacheItem], *, max_bytes: int | None, older_than_s: float | None, now: float) -> list[CacheItem]:
    """What to remove: entries unused for longer than `older_than_s`, then least recently used ones until the rest fits `max_bytes`."""
    ordered = sorted(items, key=lambda item: item.last_used)
    chosen = [i for i in ordered if older_than_s is not None and now - i.last_used > older_than_s]
    if max_bytes is not None:
        kept = sum(i.size_bytes for i in ordered if i not in chosen)
        for item in ordered:
            if kept <= max_bytes:
                break
            if item not in chosen:
                chosen.append(item)
                kept -= item.size_bytes
    return chosen


def prune_caches(settings: TaxiflowSettings, *, max_bytes: int | None, older_than_s: float | None, dry_run: bool) -> tuple[list[CacheItem], int]:
    """(the entries removed, or that would be with `dry_run`; the bytes freed)."""
    chosen = choose_evictions(cache_items(settings), max_bytes=max_bytes, older_than_s=older_than_s, now=time.time())
    freed = sum(i.size_bytes for i in chosen) if dry_run else sum(i.remove() for i in chosen)
    return chosen, freed
