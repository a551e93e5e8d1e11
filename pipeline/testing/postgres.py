"""Throwaway PostgreSQL servers for the tests: ``initdb`` + ``pg_ctl`` in a temp directory.

Debian keeps the server binaries off PATH (``/usr/lib/postgresql/<ver>/bin``), and
``initdb`` refuses to run as root, so as root every server command runs as the
``postgres`` system user (``runuser``). pytest-postgresql's process fixture can do neither
(it runs ``pg_ctl`` as the current user), hence these few lines.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

# A throwaway instance, with scram auth like a real server: its password comes from
# $PG_TEST_PASSWORD, else a fresh random one per process; none is committed, and none is
# put in a URL: clients read it from the server's libpq password file (``passfile``).
PASSWORD = os.environ.get("PG_TEST_PASSWORD") or secrets.token_urlsafe(18)


def bindir() -> Path | None:
    """Where ``initdb``/``pg_ctl`` live: $PG_BINDIR, PATH, or Debian's newest version."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """One server on 127.0.0.1:``port`` with its data in a fresh temp directory."""

    def __init__(self, port: int, bin_dir: Path) -> None:
        self.port, self.bin = port, bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="pg-"))
        self.data = self.root / "data"
        self.passfile = self.root / "pgpass"  # libpq's format; 0600, or libpq ignores it
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.root, self.user)

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return subprocess.run(
            [*prefix, *cmd], capture_output=True, text=True, check=True, timeout=120
        )

    def init(self) -> PostgresServer:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.user:
            shutil.chown(pwfile, self.user)
        self.passfile.touch(mode=0o600)
        self.passfile.write_text(f"127.0.0.1:*:*:postgres:{PASSWORD}\n")
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--no-sync",
        )
        return self

    def start(self) -> None:
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c max_connections=200"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l",
            str(self.root / "log"), "-w", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        status = subprocess.run(
            [*(["runuser", "-u", self.user, "--"] if self.user else []),
             str(self.bin / "pg_ctl"), "-D", str(self.data), "status"],
            capture_output=True,
        )  # fmt: skip
        return status.returncode == 0

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` as user postgres; the password is not in it:
        libpq reads it from :attr:`passfile`, which the URL names."""
        query = f"passfile={self.passfile}"
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?{query}"

    def create_database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg2

        conn = psycopg2.connect(self.url())
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)

    def destroy(self) -> None:
        if self.data.exists() and self.running():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
