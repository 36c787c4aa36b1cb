"""Named failure points for drills and tests of the commit protocol.

`TAXIFLOW_FAILPOINTS=publish-report` makes `failpoint("publish-report")` raise, so a test can prove
what a failure at that exact step leaves behind (nothing registered, run Failed) through the real
command. Unset in normal use: each check is one environment lookup.
"""

from __future__ import annotations

import os

ENV = "TAXIFLOW_FAILPOINTS"


class InjectedFailure(RuntimeError):
    """Raised at a failpoint named in TAXIFLOW_FAILPOINTS."""


def failpoint(name: str) -> None:
    if name in os.environ.get(ENV, "").split(","):
        raise InjectedFailure(f"failpoint {name!r} (set by {ENV})")
