"""Storage audit end to end: real Mosquitto, `surge gateway run` with storage_audit on,
real agents (CPython, and the esp32 .mpy bundle on the MicroPython unix port).

An honest device stores its plot and passes; a device that kept only part of
its plot, one that lost it, and one that stops answering are caught: proven
storage 0 for the window, the outcome counted per fleet.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from agent import keyfile
from agent.cli import main as surge_main
from broker import Mosquitto
from gateway.storage_audit.standing import storage_standing
from gateway.store import Store
from gw_helpers import Collector
from broker import free_port
from gw_process import (
    gateway_log,
    status,
    wait_for,
    metric_value,
    metrics_text,
    start_gateway,
    stop,
    surge,
    wait_online,
)
from test_agent_harness import start_agent, write_config
from test_agent_micropython import board_argv, board_env

# The esp32 .mpy bundle stores and answers without a MemoryError from 52K of
# heap on the 64-bit unix port; at the 48K report-cycle target an idle agent
# has ~5-6 KB free in pieces, and loading agent.storage_proof (~2 KB) fails
# so often that in four runs of this test at 48K the plot was not stored and
# proven within 120 s, resends and all (docs/makers.md, storage audit).
AUDIT_HEAP = "52K"

AUDIT = """
[gateway]
storage_audit = true
audit_plot_kib = 64
audit_plot_kib_small = 4
audit_k = 16
audit_interval_s = 2.0
audit_deadline_s = 3.0
audit_retries = 1
audit_window_s = 3600.0
audit_blocks_per_s = 200.0
"""


def _gateway(
    tmp: Path, broker: Mosquitto, metrics_port: int | None = None, audit: str = AUDIT
) -> tuple[Path, subprocess.Popen[str]]:
    db = tmp / "gw.db"
    conf = tmp / "gw.toml"
    conf.write_text(audit + ("metrics_port = %d\n" % metrics_port if metrics_port else ""))
    return db, start_gateway(db, broker, "--config", str(conf))


def _enroll(db: Path, key: keyfile.DeviceKey, board: str) -> None:
    surge("gateway", "enroll", "--db", str(db), "--pubkey", key.public.hex(), "--board", board, "--fleet", "test")


def _wait_standing(db: Path, device: str, pred: Any, timeout: float, what: str) -> tuple[int, int, int, int]:
    store = Store(db)
    try:
        end = time.monotonic() + timeout
        while True:
            s = storage_standing(store, device, time.time())
            if pred(s):
                return s
            assert time.monotonic() < end, "%s: standing %r\n%s" % (what, s, gateway_log(db)[-3000:])
            time.sleep(0.2)
    finally:
        store.close()


def _plot_stored(db: Path, device: str) -> int:
    store = Store(db)
    try:
        row = store.db.execute("SELECT stored FROM audit_plots WHERE device_id=?", (device,)).fetchone()
        return int(row[0]) if row else 0
    finally:
        store.close()


def _attested_with(watch: Collector, pred: Any) -> dict[str, Any] | None:
    for _, payload in list(watch.messages):
        att = json.loads(payload).get("attested")
        if att is not None and pred(att):
            return dict(att)
    return None


def _stop_agent(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
    try:
        return proc.communicate(timeout=20)[0] or ""
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0] or ""


def test_honest_cpython_device_proves_its_plot(tmp_path: Path, broker: Mosquitto) -> None:
    port = free_port()
    cfg, key = write_config(tmp_path, broker.port, interval=1, bw_probe_bytes=0)
    db, gw = _gateway(tmp_path, broker, port)
    _enroll(db, key, "linux-generic")
    wait_online(broker, gw)
    watch = Collector(broker.port, "surge/v1/test/+/verified")
    agent = start_agent(cfg)
    try:
        s = _wait_standing(db, key.device_id, lambda s: s[1] >= 2, 90, "two passed challenges")
        # 64 KiB (the slice for a CPython device), in 16 blocks of 4 KiB, on the device's disk.
        assert s == (64 * 1024, s[1], 0, 0)
        assert (tmp_path / "agent-state" / "plot.bin").stat().st_size == 64 * 1024
        text = metrics_text(port)
        assert metric_value(text, 'surge_storage_challenges_total{fleet="test",outcome="passed"}') >= 2
        assert metric_value(text, 'surge_storage_plot_blocks_total{fleet="test",kind="stored"}') == 16
        # The gateway attests the proven storage in the reports that follow (docs/protocol.md §2.8).
        att = wait_for(
            lambda: _attested_with(watch, lambda a: a["storage_bytes"] == 64 * 1024),
            30,
            "a report attested with the proven storage",
        )
        assert att["challenges"]["passed"] >= 1 and att["challenges"]["failed"] == 0
        assert "challenge_failed" not in att["flags"] and "storage_unverified" not in att["flags"]
    finally:
        out = _stop_agent(agent)
        watch.close()
        stop(gw)
    assert "storing plot 1 (4096-byte blocks)" in out and "challenge on plot 1 answered" in out


def test_cheating_devices_are_caught(tmp_path: Path, broker: Mosquitto) -> None:
    # Three devices on one gateway: one keeps half its plot and fills the rest
    # with other bytes, one deletes it after acknowledging every block, one
    # stops answering (its process frozen).  An honest one beside them keeps passing.
    db, gw = _gateway(tmp_path, broker)
    watch = Collector(broker.port, "surge/v1/test/+/verified")
    agents: dict[str, tuple[Path, Any, subprocess.Popen[str] | None]] = {}
    for name in ("half", "gone", "silent", "honest"):
        cfg, key = write_config(tmp_path, broker.port, name=name, interval=1, bw_probe_bytes=0)
        _enroll(db, key, "linux-generic")
        agents[name] = (cfg, key, None)
    wait_online(broker, gw)
    logs: dict[str, str] = {}
    try:
        for name, (cfg, key, _) in list(agents.items()):
            p = start_agent(cfg)
            agents[name] = (cfg, key, p)
        for name, (_, key, _) in agents.items():
            _wait_standing(db, key.device_id, lambda s: s[1] >= 1, 90, name + ": first pass")
        # The cheats, on what each device holds.
        half = tmp_path / "half-state" / "plot.bin"
        data = half.read_bytes()
        half.write_bytes(data[: len(data) // 2] + os.urandom(len(data) - len(data) // 2))
        (tmp_path / "gone-state" / "plot.bin").unlink()
        silent = agents["silent"][2]
        assert silent is not None
        silent.send_signal(signal.SIGSTOP)
        t0 = time.time()
        # Half the blocks gone: each challenge of 16 misses with 1 - 2^-16.
        s = _wait_standing(db, agents["half"][1].device_id, lambda s: s[2] >= 1, 60, "half: a failed challenge")
        assert s[0] == 0
        # Its next reports are attested with nothing proven, and flagged.
        half_id = agents["half"][1].device_id
        att = wait_for(
            lambda: _attested_with(watch, lambda a: a["device"] == half_id and "challenge_failed" in a["flags"]),
            30,
            "half: flagged",
        )
        assert att["storage_bytes"] == 0 and att["challenges"]["failed"] >= 1
        s = _wait_standing(db, agents["gone"][1].device_id, lambda s: s[2] >= 1, 60, "gone: a failed challenge")
        assert s[0] == 0
        # Deadline 3 s, one retry: timed out ~6 s after the first unanswered send.
        s = _wait_standing(db, agents["silent"][1].device_id, lambda s: s[3] >= 1, 60, "silent: a timeout")
        assert s[0] == 0
        # The honest device beside them still passes, and nothing of its standing is lost.
        s = _wait_standing(db, agents["honest"][1].device_id, lambda s: s[1] >= 3, 60, "honest: passes go on")
        assert s[0] == 64 * 1024 and s[2:] == (0, 0)
        store = Store(db)
        try:
            from gateway.storage_audit.ledger import Ledger

            # Counted per fleet (written once a second): the two cheats' failures, the timeout and its retry.
            def counted() -> dict[str, int] | None:
                c = Ledger(store).counts().get("test", {})
                ok = c.get("failed", 0) >= 2 and c.get("timed_out", 0) >= 1 and c.get("retried", 0) >= 1
                return c if ok else None

            counts = wait_for(counted, 20, "the outcomes counted")
            outcomes = store.db.execute(
                "SELECT device_id, outcome FROM audit_challenges WHERE resolved_at>?", (t0,)
            ).fetchall()
        finally:
            store.close()
        assert counts["passed"] >= 7
        # The operator's view of the same counts.
        st = status(db)
        assert st["storage_audit"]["test"]["failed"] >= 2
        text = surge("gateway", "status", "--db", str(db)).stdout
        line = [x for x in text.splitlines() if x.startswith("storage test: ")]
        assert line and "timed_out " in line[0] and "blocks stored" in line[0], text
        assert not [o for d, o in outcomes if d == agents["honest"][1].device_id and o != "passed"]
    finally:
        for name, (_, _, p) in agents.items():
            if p is not None:
                logs[name] = _stop_agent(p)
        watch.close()
        stop(gw)
    # The devices that failed were given a new plot (id 2) to earn their standing back.
    assert "storing plot 2" in logs["gone"] and "storing plot 2" in logs["half"]
    assert "storing plot 2" not in logs["honest"]


def test_esp32_mpy_bundle_stores_and_answers(tmp_path: Path, broker: Mosquitto, micropython: str) -> None:
    key = keyfile.generate()
    host_key = tmp_path / "esp.key.host"
    keyfile.write(str(host_key), key)
    cfg, _ = write_config(
        tmp_path,
        broker.port,
        board="esp32",
        name="esp",
        mounts=["/"],
        net_interface="sta",
        bw_probe_bytes=1024,
        interval=1,
    )
    out = tmp_path / "bundle"
    assert (
        surge_main(
            [
                "firmware",
                "build",
                "--board",
                "esp32",
                "--config",
                str(cfg),
                "--out",
                str(out),
                "--mpy",
                "--with-key",
                str(host_key),
            ]
        )
        == 0
    )
    # One late answer voids the hour's window, and on one loaded core (taskset -c 0) the
    # MicroPython board answered 6 of 34 challenges after a 3 s deadline: this honest
    # board gets the margin a slow board needs (the deadline itself is tested above).
    db, gw = _gateway(tmp_path, broker, audit=AUDIT.replace("audit_deadline_s = 3.0", "audit_deadline_s = 20.0"))
    _enroll(db, key, "esp32")
    wait_online(broker, gw)
    dev = subprocess.Popen(
        board_argv(micropython, AUDIT_HEAP),
        cwd=out,
        env=board_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # 4 KiB for a MicroPython board in 16 blocks of 256 bytes, then two passes.  (On a loaded
        # machine plotting can outlast audit_interval_s, and a first challenge then covers only
        # the blocks stored so far: the whole plot is proven by a later one.)
        s = _wait_standing(
            db,
            key.device_id,
            lambda s: s[1] >= 2 and s[0] == 4096,
            120,
            "esp32: two passed challenges, the whole plot proven",
        )
        assert s == (4096, s[1], 0, 0) and _plot_stored(db, key.device_id) == 16
        assert dev.poll() is None, "the board's agent ended"
        # Reports went on meanwhile, without a gap.
        store = Store(db)
        try:
            seqs = [
                r[0]
                for r in store.db.execute("SELECT seq FROM reports WHERE device_id=? ORDER BY seq", (key.device_id,))
            ]
        finally:
            store.close()
        assert len(seqs) >= 3 and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    finally:
        dev.terminate()
        log = dev.communicate(timeout=20)[0]
        print("board log (tail):\n" + log[-4000:])  # shown by pytest when the test fails
        stop(gw)
    assert "storing plot 1 (256-byte blocks)" in log and "challenge on plot 1 answered" in log, log[-3000:]
    assert (out / "state" / "plot.bin").stat().st_size == 4096
