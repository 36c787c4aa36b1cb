"""Planted secrets and a byte-level scanner that looks for them anywhere.

A `Secret` is a random value made per test run (`plant`), so a match can never be a coincidence.
The scanner searches bytes, not parsed text: a SQLite page, a PNG, a log line and a JSON answer
are all just bytes. Besides the value itself it looks for its random part alone (a value cut short
or re-quoted still shows it) and for that part base64-encoded at any alignment (an HTTP Basic
`Authorization` header, a base64 blob in a JSON document).

`Scanner.scan(where, data, allow=...)` records a `Finding` for each planted secret found in `data`
that `where` is not allowed to hold; `Scanner.holds(data, secret)` answers the positive controls
(a scan that can't find a planted value where it is supposed to be proves nothing).
`CmdlineWatch` samples every process's command line (world-readable through `ps`) while it runs.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets as _secrets
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.servers import all_processes


@dataclass(frozen=True)
class Secret:
    label: str  # how reports name it, e.g. "AWS_SECRET_ACCESS_KEY"
    value: str = field(repr=False)  # the planted value, as given to the product (kept out of reprs: failure output)
    core: str = field(repr=False)  # its random part (a substring of `value`)

    @property
    def needles(self) -> tuple[bytes, ...]:
        core = self.core.encode()
        return tuple(dict.fromkeys((core, *base64_forms(core))))


def plant(label: str, template: str, nbytes: int = 12, *, upper: bool = False) -> Secret:
    """A fresh secret: `template` with `{}` replaced by `nbytes` random bytes in hex."""
    core = _secrets.token_hex(nbytes)
    core = core.upper() if upper else core
    return Secret(label, template.format(core), core)


def base64_forms(raw: bytes) -> list[bytes]:
    """`raw` base64-encoded (standard and URL-safe) at each of the 3 alignments it can have inside a longer
    encoded blob: only the characters that depend on `raw`'s bits alone."""
    forms = []
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * pad + raw + b"\0" * 2)
            start = -(-pad * 8 // 6)  # first character made only of raw's bits
            end = (pad + len(raw)) * 8 // 6  # one past the last
            forms.append(encoded[start:end])
    return forms


@dataclass
class Finding:
    where: str
    label: str
    count: int
    context: str  # around the first hit, with every planted secret replaced by <LABEL>

    def __str__(self) -> str:
        return f"{self.label} in {self.where} ({self.count}x): ...{self.context}..."


@dataclass
class Scanner:
    planted: Sequence[Secret]
    findings: dict[tuple[str, str], Finding] = field(default_factory=dict)
    scanned: dict[str, int] = field(default_factory=dict)  # where -> bytes scanned (for the report)

    def __post_init__(self) -> None:
        self._by_needle = {n: s.label for s in self.planted for n in s.needles}
        self._pattern = re.compile(b"|".join(re.escape(n) for n in sorted(self._by_needle, key=len, reverse=True)))

    @staticmethod
    def as_bytes(data: object) -> bytes:
        if isinstance(data, bytes):
            return data
        if isinstance(data, str):
            return data.encode("utf-8", "surrogateescape")
        return json.dumps(data, default=str, ensure_ascii=False).encode()

    def hits(self, data: object) -> dict[str, list[int]]:
        """Planted secret label -> offsets where one of its forms occurs."""
        found: dict[str, list[int]] = {}
        for match in self._pattern.finditer(self.as_bytes(data)):
            found.setdefault(self._by_needle[match.group()], []).append(match.start())
        return found

    def holds(self, data: object, secret: Secret) -> bool:
        return secret.label in self.hits(data)

    def masked(self, data: object) -> str:
        """`data` as text with every planted secret replaced by <LABEL>: safe to show in a report."""
        text = self._pattern.sub(lambda m: f"<{self._by_needle[m.group()]}>".encode(), self.as_bytes(data))
        return re.sub(r"[^\x20-\x7e]+", "·", text.decode("utf-8", "replace"))

    def scan(self, where: str, data: object, allow: Iterable[str] = ()) -> dict[str, list[int]]:
        """Record a finding for each planted secret in `data` other than those `where` may hold; returns every hit."""
        raw = self.as_bytes(data)
        self.scanned[where] = self.scanned.get(where, 0) + len(raw)
        hits = self.hits(raw)
        allowed = set(allow)
        for label, offsets in hits.items():
            if label in allowed:
                continue
            # Masked before cutting, so the cut can't leave part of a secret showing.
            text = self.masked(raw[max(0, offsets[0] - 400) : offsets[0] + 800])
            at = text.find(f"<{label}>")
            context = text[max(0, at - 100) : at + 160]
            previous = self.findings.get((where, label))
            count = len(offsets) + (previous.count if previous else 0)
            self.findings[(where, label)] = Finding(where, label, count, previous.context if previous else context)
        return hits

    def scan_tree(self, root: Path, *, allow: Callable[[Path], Iterable[str]] = lambda p: (), prefix: str = "") -> list[Path]:
        """Scan every regular file under `root` (its name too); returns the files scanned."""
        files = []
        for directory, dirnames, filenames in os.walk(root):
            for name in filenames + dirnames:
                self.scan(f"{prefix}file name {Path(directory, name).relative_to(root)}", name)
            for name in filenames:
                path = Path(directory, name)
                if path.is_symlink() or not path.is_file():
                    continue
                try:
                    data = path.read_bytes()
                except OSError:
                    continue  # removed while we walked (a temporary file)
                self.scan(f"{prefix}{path.relative_to(root)}", data, allow(path))
                files.append(path)
        return files

    def report(self) -> str:
        return "\n".join(str(f) for f in self.findings.values())


class CmdlineWatch:
    """Samples every process's command line (any user can read them with `ps`) for planted secrets.

    `exempt(pid, label)`: a process whose command line holds that secret by the caller's own choice
    (the `taxiflow train --tracking-uri ...` the test typed); any other hit, a child included, is a finding.
    """

    def __init__(self, scanner: Scanner, interval_s: float = 0.25) -> None:
        self.scanner = scanner
        self.interval_s = interval_s
        self.samples = 0
        self.seen: dict[tuple[int, int], tuple[str, set[str]]] = {}  # (pid, start ticks) -> (masked cmdline, labels)
        self.exempt_pids: dict[int, set[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cmdline-watch", daemon=True)

    def exempt(self, pid: int, label: str) -> None:
        self.exempt_pids.setdefault(pid, set()).add(label)

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in all_processes().values():
                if (hits := self.scanner.hits(proc.cmdline)) and (proc.pid, proc.start) not in self.seen:
                    self.seen[(proc.pid, proc.start)] = (self.scanner.masked(proc.cmdline)[:400], set(hits))
            self.samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> CmdlineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        self.scanner.scanned[f"every process's command line ({self.samples} samples)"] = 0
        for (pid, _), (cmdline, labels) in self.seen.items():
            for label in labels - self.exempt_pids.get(pid, set()):
                where = f"command line of pid {pid}"
                self.scanner.findings[(where, label)] = Finding(where, label, 1, cmdline)

    def exempted(self) -> list[str]:
        """Command lines that held a secret by the caller's choice (for the report)."""
        return [cmdline for (pid, _), (cmdline, labels) in self.seen.items() if labels & self.exempt_pids.get(pid, set())]
