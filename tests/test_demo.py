"""`surge demo` end to end, as `make demo` runs it: real brokers (Mosquitto and
the embedded amqtt), the real gateway, real agents (CPython with simulated
probes, and the esp32 bundle on the MicroPython unix port), a real EVM; the
exported proof bundle is checked by `surge verify` and the library."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from broker import Mosquitto
from conftest import ROOT
from gw_process import HardhatNode, processes_under

import boards
from surge_protocol import claims as C
from agent import report
from gateway import receipts
from gateway.demo.sim import SimulatedProbes, plan
from gateway.verify import check_plausible

# Until agent/cli.py lists gateway.demo.cli, its own entry adds the command.
SURGE = [sys.executable, "-m", "gateway.demo.cli"]


def demo(
    workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`surge demo` run from the workdir's parent with a relative --workdir, as `make demo` does."""
    env = dict(env or os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [*SURGE, "demo", "--workdir", workdir.name, *args],
        cwd=workdir.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def surge_verify(bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SURGE, "verify", str(bundle), *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def check_run(proc: subprocess.CompletedProcess[str], workdir: Path, broker_kind: str) -> dict[str, int]:
    """What every successful demo run must show; returns accepted reports per device kind."""
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "broker: %s mqtt://127.0.0.1:" % broker_kind in out, out
    # Progress lines while it ran (stdout is not a terminal here).
    assert re.search(r"devices online, \d+ reports accepted \([\d.]+/s\), rejected \d+", out), out
    m = re.search(r"^VALID: report ([0-9a-f]{16}) boot (\d+) seq (\d+) ", out, re.M)
    assert m, out
    assert "try next:" in out and "surge verify %s" % Path(workdir.name, "proof.json") in out

    # The exported bundle verifies from the file, with the CLI and the library.
    bundle = workdir / "proof.json"
    ok = surge_verify(bundle)
    assert ok.returncode == 0 and ok.stdout.startswith("VALID: report %s boot %s seq %s " % m.groups()), ok.stdout
    summary = receipts.verify_bundle(receipts.load_bundle(str(bundle)))
    assert summary["device"] == m.group(1)

    # Everything it started is gone: agents, the MicroPython process, the broker.
    assert processes_under(workdir.resolve()) == []
    port = int(re.search(r"mqtt://127\.0\.0\.1:(\d+)", out).group(1))  # type: ignore[union-attr]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()

    # What the gateway stored: every enrolled device reported, the intruder was refused.
    db = sqlite3.connect(str(workdir / "gateway.db"))
    kinds: dict[str, int] = {}
    for agent_dir in sorted((workdir / "devices").iterdir()):
        log = (agent_dir / "agent.log").read_text()
        kind = (
            "micropython"
            if agent_dir.name.startswith("micropython")
            else "not enrolled"
            if agent_dir.name.startswith("intruder")
            else "sim"
        )
        if kind == "sim":
            assert "stopped after" in log, (agent_dir, log[-1000:])  # SIGTERM: the clean way out
        did = re.search(r"device ([0-9a-f]{16})", log).group(1)  # type: ignore[union-attr]
        n = db.execute("SELECT count(*) FROM reports WHERE device_id=?", (did,)).fetchone()[0]
        kinds[kind] = kinds.get(kind, 0) + (1 if n > 0 else 0)
        if kind != "not enrolled":
            assert n >= 2, (agent_dir.name, log[-1000:])
    reasons = dict(db.execute("SELECT reason, count(*) FROM rejections GROUP BY reason").fetchall())
    assert set(reasons) == {"unknown_device"} and kinds["not enrolled"] == 0, reasons
    # Everything accepted was anchored before the gateway stopped.
    unbatched = db.execute("SELECT count(*) FROM reports WHERE batch_seq IS NULL").fetchone()[0]
    assert unbatched == 0
    return kinds


def check_rewards(proc: subprocess.CompletedProcess[str], workdir: Path) -> None:
    """The owner's statement shows what they earned from attested capacity, beside a reward proof
    that `surge rewards verify` accepts from the printed path."""
    out = proc.stdout
    amounts = [int(a) for a in re.findall(r"^  epoch \d+ \(\w+\): amount (\d+), cumulative \d+$", out, re.M)]
    assert amounts and sum(amounts) > 0, out[-3000:]
    # Earned from what the gateway measured itself: a timed probe (bw_up) on some device of the owner.
    assert re.search(r"^    [0-9a-f]{16} .* bw_up \d+ B/s, .* points [1-9]\d*, ", out, re.M), out[-3000:]
    m = re.search(r"^reward proof: (\S+)\nVALID: owner (0x[0-9a-fA-F]{40}) has cumulative ([1-9]\d*) ", out, re.M)
    assert m, out[-3000:]
    ok = subprocess.run(
        [*SURGE, "rewards", "verify", m.group(1)], cwd=workdir.parent, capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0 and ok.stdout.startswith("VALID") and m.group(2) in ok.stdout, ok.stdout + ok.stderr
    # Storage was audited (storage_audit = true in the demo's gateway config): plots were stored.
    db = sqlite3.connect(str(workdir / "gateway.db"))
    assert db.execute("SELECT count(*) FROM audit_plots WHERE stored > 0").fetchone()[0] > 0


def test_demo_twenty_devices_with_mosquitto(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = demo(work, "--devices", "20", "--duration", "20")
    kinds = check_run(proc, work, "mosquitto")
    assert kinds == {"sim": 20, "micropython": 1, "not enrolled": 0}
    check_rewards(proc, work)
    # The bundle is the MicroPython agent's: its report, signed on the unix port, anchored.
    assert "a report from the micropython agent" in proc.stdout
    # A second run clears its own directory and starts a fresh fleet...
    again = demo(work, "--devices", "1", "--duration", "1", "--no-micropython")
    assert again.returncode == 0, again.stdout + again.stderr
    # ...but never a directory it did not make.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    refused = demo(tmp_path / "mine", "--duration", "1")
    assert refused.returncode == 2 and (tmp_path / "mine" / "notes.txt").exists()
    assert refused.stderr.startswith("surge: error: --workdir") and refused.stderr.count("\n") == 1


def test_demo_with_the_embedded_broker(tmp_path: Path) -> None:
    # What `make demo` does on a machine without Mosquitto (forced here by the variable).
    work = tmp_path / "demo"
    proc = demo(work, "--devices", "3", "--duration", "8", env=dict(os.environ, SURGE_DEMO_EMBEDDED_BROKER="1"))
    kinds = check_run(proc, work, "amqtt")
    assert kinds == {"sim": 3, "micropython": 1, "not enrolled": 0}


def test_demo_on_existing_broker_and_chain(tmp_path: Path, broker: Mosquitto, node: HardhatNode) -> None:
    # Hardhat's first dev account: a publicly known key, funded only on local hardhat nodes.
    key = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
    work = tmp_path / "demo"
    url = broker.url
    proc = demo(
        work,
        "--devices",
        "2",
        "--duration",
        "6",
        "--broker",
        url,
        "--chain",
        node.url,
        "--no-micropython",
        env=dict(os.environ, SURGE_CHAIN_KEY=key),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "broker: external %s" % url in proc.stdout
    assert "root matches rootOf(gateway, batch) at %s" % node.url in proc.stdout
    ok = surge_verify(work / "proof.json", "--rpc", node.url)
    assert ok.returncode == 0 and "root matches" in ok.stdout, ok.stdout
    # The demo does not stop a broker it did not start.
    socket.create_connection(("127.0.0.1", broker.port), timeout=1).close()


def test_failure_is_one_line(tmp_path: Path) -> None:
    proc = demo(tmp_path / "d", "--broker", "mqtt://127.0.0.1:1", "--duration", "1", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == "surge: error: cannot reach the broker at mqtt://127.0.0.1:1: Connection refused\n"
    assert processes_under((tmp_path / "d").resolve()) == []


def test_simulated_capacities_are_plausible_and_deterministic() -> None:
    for board in boards.names():
        profile = boards.load(board)
        seen = set()
        for i in range(100):
            did = report.device_id(bytes([i]) * 32)
            p = plan(board, did)
            assert plan(board, did) == p  # same key, same machine
            seen.add((p.storage_total, p.bw_up))
            probes = SimulatedProbes(p, did)
            for _ in range(5):
                errors: dict[str, str] = {}
                total, free = probes.storage(["/"], errors)
                rssi, mbps = probes.link("auto", errors)
                up = probes.bw_run(None, "t", 1, 4096)
                s = {C.STORAGE_TOTAL: total, C.STORAGE_FREE: free, C.BW_UP: up}
                assert check_plausible(s, profile, did) is None, (board, s)
                assert 0 < up <= profile.max_bw_up_bytes_per_s and 0 <= free <= total
                assert (rssi is None) == (mbps is not None) and (rssi is None or -95 <= rssi <= -30)
                assert (probes.net("auto", errors) is None) == (profile.runtime == "micropython")
        assert len(seen) > 10, board  # a fleet of one board still varies
