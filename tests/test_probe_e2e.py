"""Bandwidth measured by the gateway, end to end: the real CPython agent (`surge agent run`) on a real
Mosquitto, a real `surge gateway run` on the in-process EVM.  An honest agent gets a gateway-measured
bw_up in `verified` and in its proof bundle, which `surge verify` shows beside the claim; any change to
`attested` fails the bundle; an agent that claims 10x what it sends is flagged and still stored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from broker import Mosquitto, free_port
from gateway import receipts
from gw_helpers import Collector
from gw_process import metric_value, metrics_text, start_gateway, stop, surge, wait_for, wait_online, query
from test_agent_harness import ROOT, write_config

# A device on a slow link (2 ms per chunk, about 250 kB/s, where an ESP32 on Wi-Fi sits) that claims
# 10x the rate it measured itself: everything else (chunks, signing, MQTT) is the real agent.  On bare
# loopback the device's own figure is too noisy (whole ms, tiny runs) for "10x" to mean one thing.
CHEAT = """
import sys, time
from agent import bwprobe
real = bwprobe.run

class SlowLink:
    def __init__(self, link):
        self.link = link
    def publish(self, topic, data, qos):
        time.sleep(0.002)
        self.link.publish(topic, data, qos)

bwprobe.run = lambda link, topic, seq, total: real(SlowLink(link), topic, seq, total) * 10
from agent.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _enroll(db: Path, key: Any) -> None:
    surge(
        "gateway",
        "enroll",
        "--db",
        str(db),
        "--pubkey",
        key.public.hex(),
        "--board",
        "linux-generic",
        "--fleet",
        "test",
    )


def _agent(cfg: Path, count: int, cheat: bool = False) -> subprocess.CompletedProcess[str]:
    args = ["agent", "run", "--config", str(cfg), "--count", str(count)]
    cmd = [sys.executable, "-c", CHEAT, *args] if cheat else [sys.executable, "-m", "agent.cli", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=90)


def _verified(watch: Collector, device: str) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p in watch.of_kind("verified") if "/%s/" % device in t]


@pytest.fixture
def nodelay_broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Mosquitto as docs/operators.md configures it for probes: no Nagle delay on its writes."""
    b = Mosquitto(tmp_path / "mosquitto-nodelay")  # set_tcp_nodelay true, as every test broker
    b.start()
    yield b
    b.stop()


def test_honest_agent_gets_attested_bandwidth_and_a_tampered_attestation_fails(
    tmp_path: Path, nodelay_broker: Mosquitto
) -> None:
    broker = nodelay_broker
    db = tmp_path / "gw.db"
    cfg, key = write_config(tmp_path, broker.port, bw_probe_bytes=4096, interval=0.5)
    _enroll(db, key)
    port = free_port()
    conf = tmp_path / "gw.toml"
    conf.write_text("[gateway]\nmetrics_port = %d\n" % port)
    gw = start_gateway(db, broker, "--config", str(conf))
    watch = Collector(broker.port)
    try:
        wait_online(broker, gw)
        proc = _agent(cfg, 4)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # Every report's first `verified` message and its anchored copy carry the attestation.
        wait_for(
            lambda: len([v for v in _verified(watch, key.device_id) if v["batch"]]) >= 4,
            60,
            "4 anchored verified messages",
        )
        first = [v for v in _verified(watch, key.device_id) if v["batch"] is None]
        assert len(first) == 4
        for v in first:
            att = v["attested"]
            assert att["device"] == key.device_id and att["seq"] == v["seq"] and att["boot"] == v["boot"]
            assert isinstance(att["bw_up"], int) and att["bw_up"] > 0, att
            assert "bw_overclaim" not in att["flags"] and "bw_unverified" not in att["flags"], (
                v["claims"]["bw_up"],
                att,
            )
        rows = query(db, "SELECT outcome, bw_up FROM probe_runs")
        assert len(rows) == 4 and all(o == "checked" and bw for o, bw in rows)

        seq = first[-1]["seq"]
        bundle = tmp_path / "proof.json"
        surge(
            "proof", "--db", str(db), "--device", key.device_id, "--boot", "1", "--seq", str(seq), "--out", str(bundle)
        )
        doc = json.loads(bundle.read_text())
        assert doc["format"] == "surge-proof-bundle/2" and doc["attested"]["bw_up"] == first[-1]["attested"]["bw_up"]
        out = surge("verify", str(bundle)).stdout
        assert out.startswith("VALID"), out
        line = next(ln for ln in out.splitlines() if ln.strip().startswith("bw_up"))
        assert line.split()[-2:] == [str(first[-1]["claims"]["bw_up"]), str(doc["attested"]["bw_up"])], out

        # Any single-byte change inside `attested` fails; through the command line with a reason.
        raw = bundle.read_bytes()
        start = raw.index(b'"attested": {')
        end = raw.index(b"}", raw.index(b'"signature"', start)) + 1
        for i in range(start, end):
            flipped = bytearray(raw)
            flipped[i] ^= 0x01
            with pytest.raises(receipts.BundleError):
                receipts.verify_bundle(receipts.parse_bundle(bytes(flipped)))
        tampered = dict(doc, attested=dict(doc["attested"], bw_up=doc["attested"]["bw_up"] * 2))
        path = tmp_path / "tampered.json"
        path.write_text(json.dumps(tampered, indent=2))
        bad = surge("verify", str(path), check=False)
        # v2 (one signature per group): a changed body no longer leads to the signed group root.
        assert bad.returncode == 1 and bad.stdout.startswith("INVALID: attested body is not in its signed group"), (
            bad.stdout
        )

        st = json.loads(surge("gateway", "status", "--db", str(db), "--json").stdout)
        assert st["attestations"]["reports"] == 4 and st["attestations"]["bw_measured"] == 4
        wait_for(
            lambda: (
                json.loads(surge("gateway", "status", "--db", str(db), "--json").stdout)["probes"]
                .get("test", {})
                .get("runs", {})
                .get("checked")
                == 4
            ),
            10,
            "4 checked runs counted",
        )
    finally:
        watch.close()
        stop(gw)


def test_agent_claiming_ten_times_its_bandwidth_is_flagged_and_stored(tmp_path: Path, broker: Mosquitto) -> None:
    db = tmp_path / "gw.db"
    cfg, key = write_config(tmp_path, broker.port, bw_probe_bytes=4096, interval=0.5)
    _enroll(db, key)
    port = free_port()
    conf = tmp_path / "gw.toml"
    conf.write_text("[gateway]\nmetrics_port = %d\n" % port)
    gw = start_gateway(db, broker, "--config", str(conf))
    watch = Collector(broker.port)
    try:
        wait_online(broker, gw)
        proc = _agent(cfg, 3, cheat=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        wait_for(
            lambda: len([v for v in _verified(watch, key.device_id) if v["batch"] is None]) >= 3,
            60,
            "3 verified messages",
        )
        for v in _verified(watch, key.device_id)[:3]:
            att = v["attested"]
            assert att["flags"] == sorted(att["flags"]) and "bw_overclaim" in att["flags"], (v["claims"], att)
            # What is attested is what the gateway timed: about the slow link's rate, not the claim.
            assert att["bw_up"] is not None and att["bw_up"] * 4 < v["claims"]["bw_up"], (v["claims"], att)
        assert query(db, "SELECT COUNT(*) FROM reports")[0][0] == 3
        flags = query(db, "SELECT flags FROM attestations")
        assert len(flags) == 3 and all("bw_overclaim" in f for (f,) in flags)
        # The flags are counted per fleet, in the metrics and in the status.
        wait_for(
            lambda: (
                metric_value(metrics_text(port), 'surge_attestation_flags_total{flag="bw_overclaim",fleet="test"}') >= 3
            ),
            30,
            "3 bw_overclaim counted",
        )
        assert metric_value(metrics_text(port), 'surge_reports_attested_total{fleet="test"}') >= 3
        st = json.loads(surge("gateway", "status", "--db", str(db), "--json").stdout)
        assert st["attestations"]["fleets"]["test"]["flags"]["bw_overclaim"] == 3
        assert "attested test: 3 reports" in surge("gateway", "status", "--db", str(db)).stdout
    finally:
        watch.close()
        stop(gw)
