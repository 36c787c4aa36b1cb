"""PostgreSQL for the platform's metadata (`stack up --db postgres`), from Debian's packages.

Trust authentication on 127.0.0.1 only: no password exists to leak. PostgreSQL refuses to run as
root, so as root the cluster belongs to the `postgres` user, under /var/lib/postgresql.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from taxiflow.platform.processes import PlatformError, ServiceProcess, start_service

DATABASES = ("prefect", "mlflow")


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        if os.geteuid() != 0:
            raise PlatformError("PostgreSQL is not installed: run `sudo apt-get install -y postgresql`, or use --db sqlite")
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "postgresql"]):
            result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            if result.returncode != 0:
                raise PlatformError(f"installing PostgreSQL failed ({' '.join(cmd)}): {result.stderr[-800:]}")
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _data_dir(requested: Path) -> Path:
    if os.geteuid() != 0:
        return requested
    # The postgres user can't reach a root-owned state directory (often mode 700).
    return Path("/var/lib/postgresql/taxiflow") / hashlib.sha256(str(requested).encode()).hexdigest()[:12]


def ensure_postgres(requested_dir: Path, host: str, port: int, log: Path, free_or_fail) -> ServiceProcess:
    bin_dir = _bin_dir()
    data = _data_dir(requested_dir)
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data.parent, "postgres")
            shutil.chown(data, "postgres")
        result = subprocess.run(
            _as_owner([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"]), capture_output=True, text=True
        )
        if result.returncode != 0:
            raise PlatformError(f"initdb failed for {data}: {result.stderr[-800:]}")
    free_or_fail("PostgreSQL", port)
    if os.geteuid() == 0:
        log.parent.mkdir(parents=True, exist_ok=True)
    cmd = _as_owner([str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-h", host, "-k", str(data)])
    service = start_service("postgres", cmd, env=dict(os.environ), log=log, port=port, health_url=None, marker=f"-D {data}")
    deadline = time.monotonic() + 60
    while subprocess.run(["pg_isready", "-h", host, "-p", str(port), "-q"]).returncode != 0:
        if time.monotonic() > deadline:
            raise PlatformError(f"PostgreSQL on {host}:{port} not ready after 60 s; see {log}")
        time.sleep(0.3)
    psql = ["psql", "-h", host, "-p", str(port), "-U", "postgres", "-tA", "-c"]
    for name in DATABASES:
        exists = subprocess.run([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"], capture_output=True, text=True).stdout.strip()
        if exists != "1":
            subprocess.run([*psql, f"CREATE DATABASE {name}"], check=True, capture_output=True)
    return service
