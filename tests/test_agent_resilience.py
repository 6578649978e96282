"""Broker outage, kill -9, unreachable broker, missing mount, full outbox, bad config."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from surge_protocol import claims as C
from test_agent_harness import Subscriber, report_chain, run_agent, start_agent, verify, write_config


def _queued(tmp: Path) -> list[str]:
    d = tmp / "agent-outbox"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def _saved_seq(tmp: Path) -> int:
    try:
        return int(json.loads((tmp / "agent-state" / "state.json").read_text())["seq"])
    except (OSError, ValueError, KeyError):
        return 0


def _wait(cond: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def test_broker_outage_every_report_arrives_in_order(broker: Any, tmp_path: Path) -> None:
    sub = Subscriber(broker.port).start()
    cfg, key = write_config(tmp_path, broker.port, bw_probe_bytes=0)
    proc = start_agent(cfg, 14)
    try:
        sub.wait(lambda: len(sub.of("report")) >= 3, 15, "reports before the outage")
        n = sub.subacks
        broker.stop()
        # The agent keeps measuring: reports pile up in the outbox meanwhile.
        _wait(lambda: len(_queued(tmp_path)) >= 4, 15, "reports queued during the outage")
        # Freeze the agent while the broker comes back on the same port, so the
        # test subscriber is listening again before the replay starts.
        os.kill(proc.pid, signal.SIGSTOP)
        broker.start()
        sub.resubscribed(n)
        os.kill(proc.pid, signal.SIGCONT)
        assert proc.wait(30) == 0
        sub.wait(lambda: len({m.payload for m in sub.of("report")}) >= 14, 15, "all 14 reports")
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.stdout.read() if proc.stdout else ""
        sub.stop()
    chain = report_chain(sub.of("report"), key.public)
    assert [c[C.SURGE][C.SEQ] for c in chain] == list(range(1, 15))
    assert "connection lost" in out and "unreachable" in out, out
    assert len(sub.of("birth")) >= 2  # a birth on every connect
    assert _queued(tmp_path) == []


def test_kill_9_loses_nothing_and_boot_moves_on(broker: Any, tmp_path: Path) -> None:
    sub = Subscriber(broker.port).start()
    cfg, key = write_config(tmp_path, broker.port, bw_probe_bytes=0)
    try:
        n = sub.subacks
        broker.stop()  # queue reports that only exist in the outbox
        proc = start_agent(cfg)
        _wait(lambda: len(_queued(tmp_path)) >= 4, 20, "queued reports")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        queued = _queued(tmp_path)
        broker.start()
        sub.resubscribed(n)
        proc2 = run_agent(cfg, 3)
        assert proc2.returncode == 0, proc2.stderr
        sub.wait(lambda: len(sub.of("report")) >= len(queued) + 3, 15, "all reports")
    finally:
        sub.stop()
    chain = report_chain(sub.of("report"), key.public)
    boots = [c[C.BOOTCOUNT] for c in chain]
    seqs = [c[C.SURGE][C.SEQ] for c in chain]
    # Everything queued by boot 1 arrived (kill -9 may only cut the last write short),
    # then boot 2 continued the same sequence.
    assert seqs[0] == 1 and seqs == list(range(1, len(seqs) + 1))
    assert boots.count(2) == 3 and set(boots) == {1, 2}
    assert len([b for b in boots if b == 1]) >= len(queued)
    births = [verify(m.payload, key.public) for m in sub.of("birth")]
    assert births[-1][C.BOOTCOUNT] == 2


def test_unreachable_broker_keeps_running_and_queues(tmp_path: Path) -> None:
    from broker import free_port

    port = free_port()  # nothing listens here
    cfg, _ = write_config(tmp_path, port, bw_probe_bytes=2048)
    proc = start_agent(cfg)
    try:
        _wait(lambda: len(_queued(tmp_path)) >= 5, 20, "outbox growing")
        assert proc.poll() is None
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0]
    assert "broker 127.0.0.1:%d unreachable (ECONNREFUSED)" % port in out, out
    assert "reports queued; retry in" in out
    first = (tmp_path / "agent-outbox" / _queued(tmp_path)[0]).read_bytes()
    claims = verify(first, json_key(tmp_path))
    assert claims[C.SURGE][C.ERRORS]["bw"] == "not connected"


def json_key(tmp: Path) -> bytes:
    return bytes.fromhex(json.loads((tmp / "agent.key").read_text())["public"])


def test_missing_mount_is_an_error_claim(broker: Any, tmp_path: Path) -> None:
    sub = Subscriber(broker.port).start()
    try:
        cfg, key = write_config(tmp_path, broker.port, mounts=["/", "/no/such/mount"], bw_probe_bytes=0)
        proc = run_agent(cfg, 2)
        assert proc.returncode == 0, proc.stderr
        sub.wait(lambda: len(sub.of("report")) >= 2, 10, "reports")
    finally:
        sub.stop()
    for c in report_chain(sub.of("report"), key.public):
        s = c[C.SURGE]
        assert s[C.ERRORS]["storage"] == "/no/such/mount ENOENT"
        assert s[C.STORAGE_TOTAL] > 0  # the mount that exists is still measured


def test_full_outbox_drops_oldest_and_counts(broker: Any, tmp_path: Path) -> None:
    sub = Subscriber(broker.port).start()
    cfg, key = write_config(tmp_path, broker.port, bw_probe_bytes=0, outbox={"max_entries": 3})
    try:
        n = sub.subacks
        broker.stop()
        proc = start_agent(cfg)
        # 3 slots: by the 7th report, seq 1..4 were dropped. Killed once the
        # state after it is saved, not between storing a report and saving the
        # state (the agent then resumes after the report, but the count of what
        # storing it dropped is gone: agent/runner.py).
        _wait(lambda: _saved_seq(tmp_path) >= 7, 20, "seq 7 saved")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        queued = _queued(tmp_path)
        broker.start()
        sub.resubscribed(n)
        assert run_agent(cfg, 2).returncode == 0
        sub.wait(lambda: len(sub.of("report")) >= 4, 15, "reports")
    finally:
        sub.stop()
    assert len(queued) == 3
    last_queued = int(queued[-1][:16])
    got = {(c[C.BOOTCOUNT], c[C.SURGE][C.SEQ]): c for c in (verify(m.payload, key.public) for m in sub.of("report"))}
    # The restart's first report made room by dropping the oldest queued one;
    # what arrives is the newest three of boot 1's reports... minus that one.
    seqs = sorted(s for _, s in got)
    assert seqs == [last_queued - 1, last_queued, last_queued + 1, last_queued + 2]
    # DROPPED counts the reports dropped to make room since the report before:
    # one per report once the outbox is full (seq gaps show the same to the gateway).
    assert got[(1, last_queued)][C.SURGE][C.DROPPED] == 1
    assert got[(2, last_queued + 1)][C.SURGE][C.DROPPED] == 1  # persisted across the kill
    assert got[(2, last_queued + 2)][C.SURGE][C.DROPPED] == 1


def test_bad_config_names_the_field(tmp_path: Path) -> None:
    from agent.cli import main as surge

    cfg, _ = write_config(tmp_path, 1883, broker={"port": 70000})
    import io
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert surge(["agent", "run", "--config", str(cfg)]) == 2
    assert "field 'broker.port' must be an integer 1..65535, got 70000" in err.getvalue()
    assert len(err.getvalue().strip().splitlines()) == 1
