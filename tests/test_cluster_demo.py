"""`python -m gateway.cluster demo`, run briefly as an operator would: real RabbitMQ nodes, a temporary
PostgreSQL, hardhat, two gateways, simulated devices; a leader SIGKILLed midway; everything stopped at the end.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster_fixtures import _ensure_rabbitmq
from conftest import ROOT
from gw_process import processes_under
from gateway.cluster.postgres import bindir

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(autouse=True)
def _engines() -> None:
    why = _ensure_rabbitmq()
    if why:
        pytest.skip(why)
    if bindir() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed: `make system-deps` installs them")
    from chain_fixtures import ensure_node_modules

    ensure_node_modules()


def demo_argv(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cluster", "demo", "--dir", str(workdir), *args]


def test_demo_runs_survives_a_leader_kill_and_stops_everything(tmp_path: Path) -> None:
    work = tmp_path / "cluster-demo"
    proc = subprocess.run(
        demo_argv(work, "--duration", "15", "--devices", "4", "--kill-leader-after", "5"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=360,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "leader: gateway " in out
    assert "SIGKILLed the leading gateway" in out and "took the lead; restarting" in out
    check = next(line for line in out.splitlines() if line.startswith("check: "))
    assert ", 0 lost, 0 stored twice;" in check and not check.startswith("check: 0 reports"), check
    assert "verifies: batch " in out
    assert not processes_under(work)


def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    work = tmp_path / "cluster-demo"
    log = tmp_path / "demo.out"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            demo_argv(work, "--duration", "0", "--devices", "2"),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline = time.monotonic() + 240
        while "devices publishing" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 130, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "interrupted: stopping everything" in log.read_text()
    assert not processes_under(work)
