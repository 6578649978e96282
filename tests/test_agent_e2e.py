"""The CPython agent end to end: `surge agent run` -> real Mosquitto -> paho subscriber."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from surge_protocol import claims as C
from agent import report
from agent.cli import main as surge
from test_agent_harness import Subscriber, report_chain, run_agent, verify, write_config
from firmware_shim import cbor


def test_init_writes_config_and_key(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "cfg" / "pi.json"
    assert (
        surge(
            [
                "agent",
                "init",
                "--board",
                "rpi-4",
                "--broker",
                "mqtt://127.0.0.1:1883",
                "--fleet",
                "demo",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    key = tmp_path / "cfg" / "pi.key"
    assert (key.stat().st_mode & 0o777) == 0o600
    doc = json.loads(out.read_text())
    assert doc["board"] == "rpi-4" and doc["fleet"] == "demo" and doc["key_file"] == "pi.key"
    pub = json.loads(key.read_text())["public"]
    assert pub in printed and json.loads(key.read_text())["secret"] not in printed
    # Never overwrites.
    assert (
        surge(
            [
                "agent",
                "init",
                "--board",
                "rpi-4",
                "--broker",
                "mqtt://127.0.0.1:1883",
                "--fleet",
                "demo",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    # Bad input names the field.
    assert (
        surge(
            [
                "agent",
                "init",
                "--board",
                "rpi-4",
                "--broker",
                "http://x",
                "--fleet",
                "demo",
                "--out",
                str(tmp_path / "x.json"),
            ]
        )
        == 2
    )
    assert "broker.url" in capsys.readouterr().err


def test_agent_publishes_birth_status_and_chained_reports(broker: Any, tmp_path: Path) -> None:
    sub = Subscriber(broker.port).start()
    try:
        cfg, key = write_config(tmp_path, broker.port)
        proc = run_agent(cfg, 5)
        assert proc.returncode == 0, proc.stderr
        sub.wait(lambda: len(sub.of("report")) >= 5, 10, "5 reports")
        sub.wait(lambda: any(m.payload == b"offline" for m in sub.of("status")), 5, "offline")
    finally:
        sub.stop()
    dev = key.device_id
    assert all("/test/%s/" % dev in m.topic for m in sub.msgs)
    # status: retained "online" at connect, "offline" at the clean exit.
    assert [m.payload for m in sub.of("status")] == [b"online", b"offline"]
    births = sub.of("birth")
    assert len(births) == 1
    b = verify(births[0].payload, key.public)
    assert b[C.HWMODEL] == b"linux-generic" and b[C.SWNAME] == "surge-agent"
    assert b[C.BOOTCOUNT] == 1 and b[C.SURGE] == {
        C.PUBKEY: key.public,
        C.CAPS: ["storage", "net", "link", "bw"],
        C.RUNTIME: "cpython",
    }
    # protocol §2.2: the birth precedes "online"
    order = [m.topic.rsplit("/", 1)[1] for m in sub.msgs]
    assert order.index("birth") < order.index("status")
    chain = report_chain(sub.of("report"), key.public)
    assert [c[C.SURGE][C.SEQ] for c in chain] == [1, 2, 3, 4, 5]
    assert C.PREV not in chain[0][C.SURGE]
    for c in chain:
        s = c[C.SURGE]
        assert c[C.BOOTCOUNT] == 1 and s[C.SYNCED] is True and c[C.IAT] > 1704067200
        assert s[C.STORAGE_TOTAL] >= s[C.STORAGE_FREE] > 0
        assert s[C.BW_UP] > 0 and s[C.DROPPED] == 0 and s[C.INTERVAL] == 1
        assert len(c["_raw"]) <= C.MAX_REPORT_BYTES
    # Bandwidth probe: 2048 bytes in 512-byte chunks per report, regenerable from the nonce.
    probes = [cbor.loads(m.payload) for m in sub.of("probe")]
    assert len(probes) == 5 * 4
    from agent import bwprobe

    for nonce, seq, index, count, payload in probes:
        assert count == 4 and payload == bwprobe.stream_chunk(nonce, index, len(payload))
    # The outbox is empty once everything was acknowledged; state persisted.
    assert list((tmp_path / "agent-outbox").iterdir()) == []
    state = json.loads((tmp_path / "agent-state" / "state.json").read_text())
    assert state["boot"] == 1 and state["seq"] == 5
    assert bytes.fromhex(state["prev"]) == report.prev_hash(chain[-1]["_raw"])


def test_commands_report_now_and_set_interval(broker: Any, tmp_path: Path) -> None:
    import paho.mqtt.publish as publish
    from test_agent_harness import start_agent

    sub = Subscriber(broker.port).start()
    cfg, key = write_config(tmp_path, broker.port, interval=3600, bw_probe_bytes=0)
    proc = start_agent(cfg)
    try:
        sub.wait(lambda: len(sub.of("report")) >= 1, 15, "first report")
        cmd = "surge/v1/test/%s/cmd" % key.device_id

        def send(doc: dict[str, Any]) -> None:
            publish.single(cmd, json.dumps(doc), qos=1, hostname="127.0.0.1", port=broker.port)

        send({"cmd": "report-now", "nonce": "00112233445566778899"})
        sub.wait(lambda: len(sub.of("report")) >= 2, 10, "report-now")
        send({"cmd": "set-interval", "interval": 5})  # below 30: ignored
        send({"cmd": "set-interval", "interval": 45})
        send({"cmd": "reboot-into-dfu"})  # unknown: ignored
        send({"cmd": "report-now"})
        sub.wait(lambda: len(sub.of("report")) >= 3, 10, "second report-now")
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0]
        sub.stop()
    assert "interval set to 45 s by command" in out
    assert json.loads((tmp_path / "agent-state" / "state.json").read_text())["interval"] == 45
    chain = report_chain(sub.of("report"), key.public)
    assert chain[1][C.NONCE] == bytes.fromhex("00112233445566778899")
    assert C.NONCE not in chain[0] and C.NONCE not in chain[2]
    assert chain[2][C.SURGE][C.INTERVAL] == 45
