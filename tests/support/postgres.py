"""A throwaway PostgreSQL server on loopback for tests (Debian `postgresql` binaries)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def postgres_bin() -> Path | None:
    """The newest installed server's bin directory, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


@dataclass(frozen=True)
class PostgresServer:
    port: int
    url: str            # SQLAlchemy URL of an empty database ("dicomnode")

    def create_database(self, name: str) -> str:
        """A fresh, empty database (dropped first if it exists); returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_postgres(timeout_s: float = 60.0) -> Iterator[PostgresServer]:
    """initdb + pg_ctl start on a free port (as user `postgres` when we are root); stopped and removed on exit.

    The cluster lives in its own directory under the system temp dir (pytest's tmp dirs are private
    to root, where the `postgres` user cannot reach).
    """
    bindir = postgres_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries are not installed (Debian package postgresql)")
    workdir = Path(tempfile.mkdtemp(prefix="dicom-node-pg-"))
    data = workdir / "pgdata"
    run_as: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        shutil.chown(workdir, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def pg(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*run_as, *args], capture_output=True, text=True, timeout=timeout_s)
        if check and result.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({result.returncode}): {result.stderr[-2000:]}")
        return result

    pg(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(workdir / "postgres.log"), "-w", "-t", str(int(timeout_s)),
       "-o", f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100", "start")
    try:
        deadline = time.monotonic() + timeout_s
        while pg(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "dicomnode",
                 check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL on port {port} did not accept connections in {timeout_s} s")
            time.sleep(0.2)
        yield PostgresServer(port, f"postgresql+psycopg://postgres@127.0.0.1:{port}/dicomnode")
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(workdir, ignore_errors=True)
