"""Calendar months as the pipeline's unit of data (`YYYY-MM`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from taxiflow.core.errors import InvalidArgumentError

_MONTH_RE = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True, order=True)
class Month:
    year: int
    month: int

    @classmethod
    def parse(cls, text: str, *, argument: str = "month") -> Month:
        match = _MONTH_RE.match(text.strip()) if isinstance(text, str) else None
        if not match:
            raise InvalidArgumentError(f"{argument}: expected a month as YYYY-MM (e.g. 2023-01), got {text!r}")
        year, month = int(match.group(1)), int(match.group(2))
        if not 1 <= month <= 12:
            raise InvalidArgumentError(f"{argument}: month must be 01..12, got {text!r}")
        if year < 2009:
            # The TLC's trip records start in 2009.
            raise InvalidArgumentError(f"{argument}: TLC trip records start in 2009, got {text!r}")
        return cls(year, month)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    def shift(self, months: int) -> Month:
        index = self.year * 12 + (self.month - 1) + months
        return Month(index // 12, index % 12 + 1)


MAX_TRAIN_MONTHS = 24
TRAIN_RANGE_SEPARATOR = ".."


def parse_training_months(train_month: str, val_month: str) -> tuple[list[Month], Month]:
    """`train_month` is one month or a range `A..B` (inclusive); validation comes strictly after its last month."""
    text = train_month.strip() if isinstance(train_month, str) else train_month
    if isinstance(text, str) and TRAIN_RANGE_SEPARATOR in text:
        first_text, _, last_text = text.partition(TRAIN_RANGE_SEPARATOR)
        first, last = Month.parse(first_text, argument="train_month"), Month.parse(last_text, argument="train_month")
        if last < first:
            raise InvalidArgumentError(f"train_month: range {text!r} ends before it starts")
        count = (last.year - first.year) * 12 + last.month - first.month + 1
        if count > MAX_TRAIN_MONTHS:
            raise InvalidArgumentError(f"train_month: range {text!r} has {count} months, at most {MAX_TRAIN_MONTHS}")
        months = [first.shift(i) for i in range(count)]
    else:
        months = [Month.parse(text, argument="train_month")]
    val = Month.parse(val_month, argument="val_month")
    if val <= months[-1]:
        raise InvalidArgumentError(
            f"val_month ({val}) must be after train_month ({months[-1]}): a model is validated on data from after the period it was trained on"
        )
    return months, val


def last_training_month(train_month: str) -> str:
    """The newest month a model was trained on (`2023-03` of `2023-01..2023-03`): a drift check's reference."""
    return train_month.rpartition(TRAIN_RANGE_SEPARATOR)[2].strip()


def parse_month_range(text: str, *, argument: str = "months", limit: int = 240) -> list[Month]:
    """`2023-01..2023-03` (inclusive), `2023-01,2023-05` or `2023-01` -> months in order."""
    months: list[Month] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if ".." in part:
            first_text, _, last_text = part.partition("..")
            first, last = Month.parse(first_text, argument=argument), Month.parse(last_text, argument=argument)
            if last < first:
                raise InvalidArgumentError(f"{argument}: range {part!r} ends before it starts")
            count = (last.year - first.year) * 12 + last.month - first.month + 1
            months.extend(first.shift(i) for i in range(count))
        else:
            months.append(Month.parse(part, argument=argument))
    if not months:
        raise InvalidArgumentError(f"{argument}: expected YYYY-MM, YYYY-MM..YYYY-MM or a comma list, got {text!r}")
    if len(months) > limit:
        raise InvalidArgumentError(f"{argument}: {len(months)} months requested, at most {limit} at once")
    return sorted(set(months))


def monthly_training_months(reference: Month) -> tuple[Month, Month]:
    """A monthly retrain in `reference`: train on the month before last, validate on last month."""
    return reference.shift(-2), reference.shift(-1)
