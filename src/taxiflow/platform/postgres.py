"""PostgreSQL for the platform's metadata (`stack up --db postgres`), from Debian's packages.

Trust authentication on 127.0.0.1 only: no password exists to leak. PostgreSQL refuses to run as
root, so as root the cluster belongs to the `postgres` user, under /var/lib/postgresql.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from taxiflow.platform.processes import PlatformError, ServiceProcess, launch_service, start_service, stop_service

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


@dataclass(frozen=True)
class ScratchPostgres:
    """A throwaway cluster with password authentication, for tests and benchmarks (`scratch_postgres`)."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    service: ServiceProcess

    def url(self, *, password: str | None = None, database: str | None = None) -> str:
        """A `postgresql://` URL for this cluster; `password`/`database` override its own (e.g. a wrong password)."""
        secret = quote(self.password if password is None else password, safe="")
        return f"postgresql://{quote(self.user, safe='')}:{secret}@{self.host}:{self.port}/{database or self.database}"


@contextlib.contextmanager
def scratch_postgres(*, port: int | None = None, host: str = "127.0.0.1", user: str = "taxiflow", database: str = "taxiflow") -> Iterator[ScratchPostgres]:
    """A fresh cluster on `host`:`port` (a free one when None) with SCRAM password authentication, removed on exit.

    Unlike the stack's (trust on 127.0.0.1), a password is required, so a wrong one can be tested. Its
    directory is a new one in the system temporary directory: as root the cluster runs as `postgres`,
    which can reach /tmp but not a root-only test directory. fsync is off: the cluster dies with its caller.
    """
    bin_dir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="taxiflow-pg-"))
    service: ServiceProcess | None = None
    try:
        data, pwfile = root / "data", root / "pwfile"
        password = secrets.token_urlsafe(18)
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        if os.geteuid() == 0:
            for path in (root, pwfile):
                shutil.chown(path, "postgres")
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", user, "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C", "--no-sync"]
        result = subprocess.run(_as_owner(initdb), capture_output=True, text=True)
        pwfile.unlink()
        if result.returncode != 0:
            raise PlatformError(f"initdb failed for {data}: {result.stderr[-800:]}")
        if port is None:
            with socket.socket() as probe:
                probe.bind((host, 0))
                port = int(probe.getsockname()[1])
        log = root / "postgres.log"
        cmd = _as_owner([str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-h", host, "-k", str(root), "-c", "fsync=off"])
        service, process = launch_service("postgres", cmd, env=dict(os.environ), log=log, port=port, health_url=None, marker=f"-D {data}")
        deadline = time.monotonic() + 60
        while subprocess.run([str(bin_dir / "pg_isready"), "-h", host, "-p", str(port), "-q"]).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise PlatformError(f"PostgreSQL on {host}:{port} did not start; see {log}:\n{log.read_text(errors='replace')[-800:]}")
            time.sleep(0.1)
        # The password goes through the environment, never a command line (visible in ps).
        psql = [str(bin_dir / "psql"), "-h", host, "-p", str(port), "-U", user, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc"]
        created = subprocess.run([*psql, f'CREATE DATABASE "{database}"'], capture_output=True, text=True, env={**os.environ, "PGPASSWORD": password})
        if created.returncode != 0:
            raise PlatformError(f"creating database {database} on {host}:{port} failed: {created.stderr[-800:]}")
        yield ScratchPostgres(host, port, user, password, database, service)
    finally:
        if service is not None:
            stop_service(service)
        shutil.rmtree(root, ignore_errors=True)
