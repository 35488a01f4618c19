"""A private PostgreSQL server (tests, benchmarks): `initdb` + `pg_ctl` in a temporary directory.

Listens on 127.0.0.1 on a free port, its socket directory inside the temporary directory, trust
authentication for the superuser `gw`, fsync off (a test database is thrown away). Debian's
PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user
(`runuser -u postgres -- ...`) in a directory handed to it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from gateway.errors import GatewayError
from gateway.sim.redisproc import free_port

USER = "gw"
BOOTSTRAP_HINT = "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): run ops/bootstrap.sh"


class PostgresUnavailable(GatewayError):
    """The private PostgreSQL could not be found or started."""


def pg_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian layout), or None."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in p.parent.name.split(".") if x.isdigit())

    return max(found, key=version) if found else None


class PostgresProcess:
    """Start/stop a private PostgreSQL server; `url_for(db)` names a database on it."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bindir = pg_bindir()
        self.base = Path(tempfile.mkdtemp(prefix="gw-pg-"))
        self.data_dir = self.base / "data"
        self.socket_dir = self.base / "run"
        self._as_root = os.geteuid() == 0
        self._started = False

    @property
    def url(self) -> str:
        """The default database (`postgres`)."""
        return self.url_for("postgres")

    def url_for(self, db: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{db}"

    def _run(self, args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        cmd = (["runuser", "-u", "postgres", "--", *args]) if self._as_root else args
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def _bin(self, name: str) -> str:
        assert self.bindir is not None
        return str(self.bindir / name)

    def start(self, timeout: float = 30.0) -> PostgresProcess:
        if self.bindir is None:
            raise PostgresUnavailable(BOOTSTRAP_HINT)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            shutil.chown(self.base, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")
        init = self._run(
            [self._bin("initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync"]
        )
        if init.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {(init.stderr or init.stdout).strip()[-500:]}")
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.socket_dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        started = self._run(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.base / "server.log"),
                "-o",
                options,
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ],
            timeout=timeout + 10,
        )
        self._started = True
        if started.returncode != 0:
            log = self.base / "server.log"
            tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
            raise PostgresUnavailable(f"pg_ctl start failed: {started.stderr.strip()[-300:]} {tail}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise PostgresUnavailable(f"PostgreSQL did not listen on port {self.port} within {timeout}s")

    def create_database(self, name: str) -> str:
        """Create database `name` (owned by `gw`); its URL."""
        done = self._run([self._bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name], timeout=30)
        if done.returncode != 0:
            raise PostgresUnavailable(f"createdb {name} failed: {done.stderr.strip()[-300:]}")
        return self.url_for(name)

    def stop(self) -> None:
        """Stop at once (`-m immediate`: nothing to keep)."""
        if self._started and self.bindir is not None:
            self._run([self._bin("pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"], timeout=30)
        self._started = False

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresProcess:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
