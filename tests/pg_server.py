"""A private PostgreSQL server for the tests: initdb + pg_ctl in a temp dir, loopback, a free port.

One server per test session (initdb takes a second), a fresh database per test
(created and dropped by the ``pg_url`` fixture in tests/conftest.py).  The
server binaries come from ``pg_config --bindir`` or /usr/lib/postgresql/*/bin;
initdb refuses to run as root, so under root the cluster belongs to the
``postgres`` system user (Debian's package creates it) or, failing that,
``nobody``.  Where no PostgreSQL is installed the tests skip, saying so.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from broker import free_port
from gateway.cluster.postgres import bindir

SUPERUSER = "surge"
__all__ = ["PostgresServer", "SUPERUSER", "bindir"]


def _run_as() -> list[str]:
    """The prefix that runs a server command as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return ["runuser", "-u", user, "--"]
    raise RuntimeError("running as root and neither a `postgres` nor a `nobody` user exists for initdb")


def _owner() -> tuple[int, int] | None:
    prefix = _run_as()
    if not prefix:
        return None
    pw = pwd.getpwnam(prefix[2])
    return pw.pw_uid, pw.pw_gid


class PostgresServer:
    def __init__(self, bin_dir: Path, durable: bool = False) -> None:
        self.bin = bin_dir
        self.durable = durable  # fsync on (the bench); the tests kill connections, not machines
        self.root = Path(tempfile.mkdtemp(prefix="surge-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        owner = _owner()
        if owner is not None:
            os.chown(self.root, *owner)

    def _cmd(self, *args: str) -> list[str]:
        return _run_as() + list(args)

    def start(self) -> None:
        subprocess.run(
            self._cmd(
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
        )
        # Loopback TCP only, no Unix socket (its default directory needs root).
        # fsync off: these tests kill connections and gateways, never the server's machine.
        opts = "-c listen_addresses=127.0.0.1 -p %d -c unix_socket_directories='' -c max_connections=200%s" % (
            self.port,
            "" if self.durable else " -c fsync=off",
        )
        subprocess.run(
            self._cmd(
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                "60",
                "-o",
                opts,
                "start",
            ),
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(
            self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"),
            capture_output=True,
        )
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return "postgresql://%s@127.0.0.1:%d/%s" % (SUPERUSER, self.port, dbname)

    def create_database(self) -> str:
        import psycopg

        name = "surge_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute("CREATE DATABASE %s" % name)
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)

    def backends(self, dbname: str) -> int:
        """How many client connections ``dbname`` has now."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as c:
            row = c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname=%s AND backend_type='client backend'", (dbname,)
            ).fetchone()
            return int(row[0]) if row else 0

    def terminate_backends(self, dbname: str, application_name: str | None = None) -> int:
        """pg_terminate_backend on every connection to ``dbname`` (a dropped connection, as the client sees it)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as c:
            sql = (
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname=%s "
                "AND pid <> pg_backend_pid()"
            )
            args: tuple[str, ...] = (dbname,)
            if application_name is not None:
                sql += " AND application_name=%s"
                args += (application_name,)
            row = c.execute(sql, args).fetchone()
            return int(row[0]) if row else 0
