"""Device keys: rotation (protocol §3.1), revocation, and key files the agent refuses.

Rotation, through a real broker and `surge gateway run`: a report signed by the
current key announces the next one (surge claim 15); the gateway records it and
switches only once that report's batch is confirmed on chain. Before the switch
the new key is refused, after it the old one is; bundles of reports under
either key verify, each naming the key that signed it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from surge_protocol import claims as C
from agent import keyfile, report
from broker import Mosquitto
from gw_helpers import Collector, Device
from gw_process import AckPublisher, enroll, query, start_gateway, stop, surge, wait_for, wait_online
from test_agent_harness import ROOT, write_config


def reasons(db: Path) -> dict[str, int]:
    return {r: n for r, n in query(db, "SELECT reason, count FROM rejection_counts")}


def test_rotation_switches_once_the_announcement_is_anchored(tmp_path: Path, broker: Mosquitto) -> None:
    db = tmp_path / "gw.db"
    dev = Device(board="rpi-4")
    enroll(db, dev)
    new = keyfile.generate()
    gw = start_gateway(db, broker, batch_size=3, batch_seconds=3600)
    watch = Collector(broker.port, "surge/v1/+/+/receipt")
    pub = AckPublisher(broker.port)

    def signed_by_new(**kw: object) -> bytes:
        """The next report of ``dev`` (same seq/prev chain), signed with the new key."""
        args = dict(seq=dev.seq, bootcount=dev.boot, uptime=50 + dev.seq, interval=60, prev=dev.prev)
        args.update(kw)
        data = report.sign_report(new.secret, new.public, report.build_claims(**args))
        return data

    def stored(data: bytes) -> bool:
        return bool(query(db, "SELECT 1 FROM reports WHERE cose=?", (data,)))

    def rejected(reason: str, n: int) -> None:
        wait_for(lambda: reasons(db).get(reason, 0) >= n, 20, "%d %s rejections" % (n, reason))

    try:
        wait_online(broker, gw)
        first = dev.report()
        pub.send(dev.topic, first)
        wait_for(lambda: stored(first), 20, "first report")
        announce = dev.report(next_pubkey=new.public)
        pub.send(dev.topic, announce)
        wait_for(lambda: stored(announce), 20, "the announcing report")
        # Recorded at once, not yet in force: the announcement is not anchored (batches of 3).
        wait_for(
            lambda: query(db, "SELECT next_pubkey FROM devices WHERE device_id=?", (dev.id,)) == [(new.public,)],
            10,
            "next_pubkey recorded",
        )
        early = signed_by_new()
        pub.send(dev.topic, early)
        rejected("kid_mismatch", 1)
        assert not stored(early)
        third = dev.report()  # still the old key; it fills the batch, which gets anchored
        pub.send(dev.topic, third)
        wait_for(lambda: stored(third), 20, "the third report")

        def announce_receipted() -> bool:
            return any(
                json.loads(p).get("status") == "confirmed" and json.loads(p)["seq"] == 1
                for _, p in watch.of_kind("receipt")
            )

        wait_for(announce_receipted, 60, "the announcing report confirmed on chain")
        wait_for(
            lambda: (
                query(db, "SELECT pubkey, next_pubkey FROM devices WHERE device_id=?", (dev.id,))
                == [(new.public, None)]
            ),
            20,
            "the switch to the new key",
        )

        # Old key after the switch: refused, whatever it signs.
        old_after = dev.report()
        dev.seq -= 1
        dev.prev = report.prev_hash(third)
        pub.send(dev.topic, old_after)
        rejected("kid_mismatch", 2)
        assert not stored(old_after)
        # New key: accepted, same device id, topic and seq chain.
        n1 = signed_by_new()
        pub.send(dev.topic, n1)
        wait_for(lambda: stored(n1), 20, "a report under the new key")
        assert query(db, "SELECT gap FROM reports WHERE cose=?", (n1,)) == [(0,)]
        dev.seq += 1
        dev.prev = report.prev_hash(n1)
        n2 = signed_by_new()
        pub.send(dev.topic, n2)
        wait_for(lambda: stored(n2), 20, "a second report under the new key")
        dev.seq += 1
        dev.prev = report.prev_hash(n2)
        n3 = signed_by_new()
        pub.send(dev.topic, n3)
        wait_for(
            lambda: query(db, "SELECT COUNT(*) FROM batches WHERE state='receipted'") == [(2,)],
            60,
            "the new key's batch confirmed",
        )

        # Bundles of reports under each key verify offline, each naming the key that signed it.
        for seq, key in ((0, dev.key.public), (3, new.public)):
            path = tmp_path / ("bundle-%d.json" % seq)
            surge("proof", "--db", str(db), "--device", dev.id, "--boot", "1", "--seq", str(seq), "--out", str(path))
            doc = json.loads(path.read_text())
            assert doc["public_key"] == key.hex() and doc["device"] == C.device_id(key)
            assert surge("verify", str(path)).stdout.startswith("VALID")

        # A retired key cannot come back, not even as a new device.
        again = surge(
            "gateway",
            "enroll",
            "--db",
            str(db),
            "--pubkey",
            dev.key.public.hex(),
            "--board",
            "rpi-4",
            "--fleet",
            "demo",
            check=False,
        )
        assert again.returncode != 0 and "retired" in (again.stdout + again.stderr)
        # Revocation still wins over everything: after it, even the new key is refused.
        surge("gateway", "revoke", "--db", str(db), dev.id)
        dev.seq += 1
        dev.prev = report.prev_hash(n3)
        wait_for(lambda: _send_until_revoked(pub, dev, signed_by_new, db), 30, "revocation", 0.5)
        assert gw.poll() is None
    finally:
        watch.close()
        pub.close()
        stop(gw)


def _send_until_revoked(pub: AckPublisher, dev: Device, sign: object, db: Path) -> bool:
    data = sign()  # type: ignore[operator]
    pub.send(dev.topic, data)
    wait_for(
        lambda: reasons(db).get("revoked_device", 0) >= 1 or query(db, "SELECT 1 FROM reports WHERE cose=?", (data,)),
        20,
        "an outcome",
    )
    if reasons(db).get("revoked_device", 0) >= 1:
        return True
    dev.seq += 1
    dev.prev = report.prev_hash(data)
    return False


def test_agent_refuses_a_key_file_others_can_read(tmp_path: Path) -> None:
    cfg, _ = write_config(tmp_path, 1883)
    key = tmp_path / "agent.key"
    for mode in (0o644, 0o640, 0o604):
        os.chmod(key, mode)
        proc = subprocess.run(
            [sys.executable, "-m", "agent.cli", "agent", "run", "--config", str(cfg), "--count", "1"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0
        assert "accessible by group or others" in proc.stderr and "chmod 600" in proc.stderr, proc.stderr
        assert json.loads(key.read_text())["secret"] not in proc.stdout + proc.stderr
        assert not (tmp_path / "agent-outbox").exists() or not any((tmp_path / "agent-outbox").iterdir())
