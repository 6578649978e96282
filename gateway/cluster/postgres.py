"""A throwaway PostgreSQL server on loopback for the cluster demo: initdb and pg_ctl in a temporary directory.

Trust authentication, TCP on 127.0.0.1 only (no Unix socket), a free port.
initdb refuses to run as root, so under root the server runs as the
``postgres`` system user that Debian's package creates.  ``stop()`` removes
the directory: nothing of it outlives the demo.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from gateway.cluster.common import ClusterError, free_port

SUPERUSER = "surge"


def bindir() -> Path | None:
    """Where initdb and pg_ctl are (pg_config, Debian's /usr/lib/postgresql/N/bin, PATH), or None."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out:
            candidates.append(Path(out))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent)
    return next((c for c in candidates if (c / "initdb").exists() and (c / "pg_ctl").exists()), None)


class TempPostgres:
    def __init__(self) -> None:
        found = bindir()
        if found is None:
            raise ClusterError(
                "PostgreSQL's server (initdb, pg_ctl) is not installed: `make system-deps` installs "
                "Debian's postgresql package, or pass --db postgresql://... of a server you run"
            )
        self.bin = found
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise ClusterError(
                    "running as root and there is no `postgres` user for initdb; pass --db postgresql://... instead"
                ) from None
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.root = Path(tempfile.mkdtemp(prefix="surge-cluster-pg-"))
        if self.prefix:
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.port = free_port()

    def _run(self, *args: str) -> None:
        out = subprocess.run(self.prefix + list(args), capture_output=True, text=True, check=False, timeout=120)
        if out.returncode != 0:
            raise ClusterError("%s failed: %s" % (Path(args[0]).name, (out.stderr or out.stdout).strip()[-500:]))

    def start(self) -> str:
        """Start the server and create database ``surge``; its URL."""
        data = self.root / "data"
        self._run(str(self.bin / "initdb"), "-D", str(data), "-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--no-sync")
        opts = "-c listen_addresses=127.0.0.1 -p %d -c unix_socket_directories='' -c max_connections=100" % self.port
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            opts,
            "start",
        )
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as c:
            c.execute("CREATE DATABASE surge")
        return self.url("surge")

    def url(self, dbname: str) -> str:
        return "postgresql://%s@127.0.0.1:%d/%s" % (SUPERUSER, self.port, dbname)

    def stop(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            subprocess.run(
                self.prefix + [str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop"],
                capture_output=True,
                check=False,
                timeout=60,
            )
        shutil.rmtree(self.root, ignore_errors=True)
