"""Hostile and broken reports against a running `surge gateway run` and a real broker.

Each bad message is refused with its reason code (docs/protocol.md §6), counted
in `surge gateway status --json` and on the Prometheus endpoint, told to the
device on its receipt topic, and the gateway keeps running and accepting good
reports afterwards. An exact resend is acknowledged and stored once.
"""

from __future__ import annotations

import json
from pathlib import Path

from nacl.signing import SigningKey

from surge_protocol import claims as C
from agent import report
from broker import Mosquitto, free_port
from firmware_shim import cbor
from gw_helpers import Collector, Device
from gw_process import (
    AckPublisher,
    enroll,
    metric_value,
    metrics_text,
    query,
    start_gateway,
    status,
    stop,
    surge,
    wait_for,
    wait_online,
)


def forged(victim: Device, seq: int) -> bytes:
    """A well-formed report under the victim's kid, signed by some other key."""
    claims = report.build_claims(seq=seq, bootcount=1, uptime=5, interval=60, storage=(1000, 10))
    payload = cbor.dumps(claims)
    protected = b"\xa2\x01\x27\x04\x48" + C.kid(victim.key.public)
    sig = SigningKey(b"\x07" * 32).sign(cbor.dumps(["Signature1", protected, b"", payload])).signature
    return b"\xd2" + cbor.dumps([protected, {}, payload, sig])


def counts(db: Path) -> dict[str, int]:
    return {r: n for r, n in query(db, "SELECT reason, count FROM rejection_counts")}


def test_each_bad_report_is_rejected_counted_and_the_gateway_carries_on(tmp_path: Path, broker: Mosquitto) -> None:
    db = tmp_path / "gw.db"
    good, revoked, replayer, wrong_fleet, big = Device(), Device(), Device(), Device(), Device()
    stranger = Device()  # never enrolled
    for d in (good, revoked, replayer, wrong_fleet, big):
        enroll(db, d)
    mport = free_port()
    gw = start_gateway(db, broker, "--metrics-port", str(mport), batch_size=1000, batch_seconds=3600)
    watch = Collector(broker.port, "surge/v1/+/+/receipt")
    pub = AckPublisher(broker.port)
    expected: dict[str, int] = {}

    def rejected(topic: str, payload: bytes, reason: str) -> None:
        """Publish, then wait until the gateway has stored a rejection with ``reason``."""
        expected[reason] = expected.get(reason, 0) + 1
        pub.send(topic, payload)
        wait_for(lambda: counts(db).get(reason, 0) >= expected[reason], 20, "a %s rejection" % reason)

    def accepted(dev: Device, data: bytes) -> None:
        pub.send(dev.topic, data)
        wait_for(lambda: query(db, "SELECT 1 FROM reports WHERE cose=?", (data,)), 20, "report accepted")

    try:
        wait_online(broker, gw)
        accepted(good, good.report())

        # Forged: well-formed, right kid, signed by the wrong key.
        rejected(good.topic, forged(good, seq=good.seq), "bad_signature")
        # The same bytes with one bit of a genuine signature flipped.
        genuine = bytearray(good.report(seq=good.seq))
        good.seq -= 1  # not sent as is: the next good report reuses this seq
        genuine[-1] ^= 0x01
        rejected(good.topic, bytes(genuine), "bad_signature")

        rejected(stranger.topic, stranger.report(), "unknown_device")
        # A genuine, enrolled device publishing under another fleet's topics.
        rejected(wrong_fleet.topic.replace("/demo/", "/other/"), wrong_fleet.report(), "unknown_device")

        rejected(good.topic, b"\xd2\x84\x4d\xa2\x01\x27\xff\xff", "malformed_cbor")

        # Oversize: a correctly signed report that is simply too long.
        long_errors = {"storage": "x" * 600, "net": "y" * 500}
        data = big.report(errors=long_errors)
        assert len(data) > 1024
        rejected(big.topic, data, "oversize")

        # Implausible: more storage than an ESP32 board profile allows.
        rejected(big.topic, big.report(storage=(10**15, 1)), "implausible")
        rejected(big.topic, big.report(storage=(1000, 2000)), "implausible")  # free > total

        # Replay: seq 0..2 accepted, seq 5 accepted (a gap), then a seq 4 that seq 5 does not follow
        # (its prev is seq 2's): a late report its accepted successor disowns.
        for _ in range(3):
            accepted(replayer, replayer.report())
        five = replayer.report(seq=5)
        accepted(replayer, five)
        older = replayer.report(seq=4)
        rejected(replayer.topic, older, "replay")
        # A different report under an accepted (boot, seq) is a replay as well.
        rejected(replayer.topic, replayer.report(seq=5, uptime=999), "replay")

        # Exact duplicate: acknowledged, not stored again, not a rejection.
        before = counts(db)
        pub.send(replayer.topic, five)
        wait_for(
            lambda: metric_value(metrics_text(mport), "surge_reports_duplicate_total") >= 1,
            20,
            "the duplicate to be acknowledged",
        )
        assert query(db, "SELECT COUNT(*) FROM reports WHERE device_id=? AND seq=5", (replayer.id,)) == [(1,)]
        assert counts(db) == before

        # Revocation while running: from some report on (the registry cache lives a few
        # seconds), every report of the device is refused.
        accepted(revoked, revoked.report())
        surge("gateway", "revoke", "--db", str(db), revoked.id)
        expected["revoked_device"] = 1

        def next_revoked_report_refused() -> bool:
            data = revoked.report()
            pub.send(revoked.topic, data)
            wait_for(
                lambda: (
                    counts(db).get("revoked_device", 0) >= 1 or query(db, "SELECT 1 FROM reports WHERE cose=?", (data,))
                ),
                20,
                "an outcome",
            )
            return counts(db).get("revoked_device", 0) >= 1

        wait_for(next_revoked_report_refused, 30, "revocation to take effect", interval=0.25)
        stored = query(db, "SELECT COUNT(*) FROM reports WHERE device_id=?", (revoked.id,))[0][0]
        rejected(revoked.topic, revoked.report(), "revoked_device")
        assert query(db, "SELECT COUNT(*) FROM reports WHERE device_id=?", (revoked.id,))[0][0] == stored

        # Still running, still accepting.
        assert gw.poll() is None
        accepted(good, good.report())

        st = status(db)
        assert st["rejections"] == expected, st["rejections"]
        assert st["reports"]["accepted"] == len(query(db, "SELECT id FROM reports"))
        assert {r["reason"] for r in st["recent_rejections"]} <= set(expected)
        reasons = {r["reason"]: r["detail"] for r in st["recent_rejections"]}
        assert "exceeds" in reasons["implausible"] and "revoked" in reasons["revoked_device"]

        text = metrics_text(mport)
        for reason, n in expected.items():
            assert 'surge_reports_rejected_total{reason="%s"} %.1f' % (reason, n) in text, (reason, text)
        assert metric_value(text, "surge_reports_accepted_total") == st["reports"]["accepted"]

        # The device hears about its rejection on its receipt topic.
        def told() -> set[tuple[str, str]]:
            return {
                (t.split("/")[3], json.loads(p)["reason"])
                for t, p in watch.of_kind("receipt")
                if json.loads(p).get("status") == "rejected"
            }

        wait_for(
            lambda: (
                {
                    (good.id, "bad_signature"),
                    (big.id, "implausible"),
                    (replayer.id, "replay"),
                    (revoked.id, "revoked_device"),
                    (stranger.id, "unknown_device"),
                }
                <= told()
            ),
            20,
            "rejection receipts",
        )
        assert all(len(json.loads(p)["report_sha256"]) == 64 for _, p in watch.of_kind("receipt"))
        assert gw.poll() is None
    finally:
        watch.close()
        pub.close()
        stop(gw)
