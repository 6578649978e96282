"""End to end: reports -> real Mosquitto -> `surge gateway run` -> memory chain ->
receipts on device topics -> exported bundle verifies, and fails after any
single-byte change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker import Mosquitto
from gateway import receipts
from gw_helpers import Collector, Device, publisher
from gw_process import enroll, start_gateway, status, stop, surge, wait_online


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
        assert watch.wait(lambda: len(watch.of_kind("receipt")) == len(sent), 60), (
            db.with_suffix(".log").read_text()[-3000:],
            watch.messages[-5:],
        )
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
        # The anchored copy names the same leaf, root and transaction as the receipt.
        by_report = {(r["device"], r["seq"]): r for r in (json.loads(p) for _, p in watch.of_kind("receipt"))}
        for v in anchored:
            rec = by_report[(v["device"], v["seq"])]
            assert (v["batch"]["leaf_index"], v["batch"]["root"], v["batch"]["tx_hash"]) == (
                rec["leaf_index"],
                rec["root"],
                rec["chain"]["tx_hash"],
            )
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
