"""End to end: reports -> real Mosquitto -> `surge gateway run` -> memory chain ->
receipts on device topics -> exported bundle verifies, and fails after any
single-byte change."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from broker import Mosquitto
from gateway import receipts
from gw_helpers import Collector, Device, publisher


def surge(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def start_gateway(db: Path, broker: Mosquitto, *extra: str) -> subprocess.Popen[str]:
    log = open(db.with_suffix(".log"), "a")
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "gateway", "run", "--broker", broker.url,
                             "--db", str(db), "--batch-size", "5", "--batch-seconds", "1",
                             "--confirmations", "2", *extra], stdout=log, stderr=subprocess.STDOUT, text=True)


def wait_online(broker: Mosquitto, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """Until the gateway announces it is subscribed (retained status 'online')."""
    watch = Collector(broker.port, "surge/v1/_gateway/+/status")
    try:
        ok = watch.wait(lambda: any(p == b"online" for _, p in watch.messages) or proc.poll() is not None, timeout)
        assert ok and proc.poll() is None, "gateway did not come online"
    finally:
        watch.close()


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def status(db: Path) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(surge("gateway", "status", "--db", str(db), "--json").stdout)
    return out


def enroll(db: Path, dev: Device) -> None:
    surge("gateway", "enroll", "--db", str(db), "--pubkey", dev.key.public.hex(), "--board", dev.board,
          "--fleet", dev.fleet)


def test_reports_to_receipts_and_bundles(tmp_path: Path, broker: Mosquitto) -> None:
    db = tmp_path / "gw.db"
    devs = [Device(), Device(board="rpi-4")]
    for d in devs:
        enroll(db, d)
    gw = start_gateway(db, broker)
    wait_online(broker, gw)
    watch = Collector(broker.port)
    pub = publisher(broker.port)
    try:
        sent = []
        for _ in range(6):
            for d in devs:
                data = d.report()
                pub.publish(d.topic, data, qos=1).wait_for_publish(10)
                sent.append((d, d.seq - 1, data))
        assert watch.wait(lambda: len(watch.of_kind("receipt")) == len(sent), 60), \
            (db.with_suffix(".log").read_text()[-3000:], watch.messages[-5:])
        # Each device got exactly its own receipts, with a proof of the right length.
        for topic, payload in watch.of_kind("receipt"):
            rec = json.loads(payload)
            assert topic.endswith("/%s/receipt" % rec["device"])
            assert rec["tree_size"] >= 1 and len(rec["chain"]["tx_hash"]) == 64
            assert len(rec["proof"]) <= max(1, rec["tree_size"] - 1).bit_length()
        verified = [json.loads(p) for _, p in watch.of_kind("verified")]
        first = [v for v in verified if v["batch"] is None]
        anchored = [v for v in verified if v["batch"] is not None]
        assert len(first) == len(sent) and len(anchored) == len(sent)
        assert {v["claims"]["storage_total"] for v in first} == {4_000_000}
        assert watch.of_kind("batches")
        st = status(db)
        assert st["reports"]["accepted"] == len(sent) and st["rejections"] == {}

        dev, seq, _ = sent[-1]
        bundle = tmp_path / "proof.json"
        surge("proof", "--db", str(db), "--device", dev.id, "--boot", "1", "--seq", str(seq), "--out", str(bundle))
        ok = surge("verify", str(bundle))
        assert ok.stdout.startswith("VALID"), ok.stdout

        raw = bundle.read_bytes()
        receipts.verify_bundle(receipts.parse_bundle(raw))
        for i in range(len(raw)):
            flipped = bytearray(raw)
            flipped[i] ^= 0x01
            with pytest.raises(receipts.BundleError):
                receipts.verify_bundle(receipts.parse_bundle(bytes(flipped)))
        # And through the command line, for a flip in the report and one in the batch record.
        tampered = tmp_path / "tampered.json"
        for needle in ('"report": "', '"first_at": '):
            at = raw.index(needle.encode()) + len(needle) + 2
            flipped = bytearray(raw)
            flipped[at] ^= 0x01
            tampered.write_bytes(bytes(flipped))
            proc = surge("verify", str(tampered), check=False)
            assert proc.returncode == 1 and proc.stdout.startswith("INVALID"), proc.stdout
    finally:
        watch.close()
        pub.loop_stop()
        stop(gw)

