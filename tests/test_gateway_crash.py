"""Crash safety: kill -9 the gateway at each crash point while reports flow,
restart it, and check that nothing acknowledged is lost or doubled.

The gateway kills itself with SIGKILL at ``SURGE_CRASH_AT=<point>:2`` (the
second time it gets there; see gateway/faults.py), as a power cut would. The
chain is hardhat's node, which outlives the gateway; a miner thread gives it
a block time. The publisher waits for the broker's PUBACK of every report:
each of those must end up stored exactly once, in a batch anchored exactly
once on chain, with a receipt on its device's topic.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from broker import Mosquitto, free_port
from gateway.chain import AlreadyAnchored, ChainKey, open_chain
from gw_helpers import Collector, Device
from gw_process import (
    HARDHAT_KEY_0,
    AckPublisher,
    HardhatNode,
    gateway_log,
    enroll,
    metric_value,
    metrics_text,
    query,
    start_gateway,
    status,
    stop,
    wait_for,
    wait_online,
)

CRASH_POINTS = ("ingest-committed", "batch-closed", "anchor-submitted", "anchor-recorded")


# A block every 0.2 s: the gateway under test waits for K confirmations.
pytestmark = pytest.mark.usefixtures("miner")


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_at_crash_point_then_restart(point: str, tmp_path: Path, broker: Mosquitto, node: HardhatNode) -> None:
    db = tmp_path / "gw.db"
    devs = [Device(), Device(), Device(board="rpi-4"), Device(board="rpi-4")]
    for d in devs:
        enroll(db, d)
    env = dict(os.environ, SURGE_CHAIN_KEY=HARDHAT_KEY_0)
    watch = Collector(broker.port, "surge/v1/+/+/receipt")
    pub = AckPublisher(broker.port)
    sent: dict[tuple[str, int], bytes] = {}
    turn = [0]

    def send_one() -> None:
        d = devs[turn[0] % len(devs)]
        turn[0] += 1
        data = d.report()
        pub.send(d.topic, data)  # returns after the broker's PUBACK
        sent[(d.id, d.seq - 1)] = data

    mport = free_port()
    gw = start_gateway(
        db, broker, "--chain", node.url, env=dict(env, SURGE_CRASH_AT=point + ":2"), batch_size=3, batch_seconds=0.5
    )
    try:
        wait_online(broker, gw)
        # Reports flow until the gateway kills itself.
        deadline = time.monotonic() + 60
        while gw.poll() is None:
            assert time.monotonic() < deadline, "the gateway never reached %s" % point
            send_one()
            time.sleep(0.03)
        assert gw.returncode == -9, gateway_log(db)[-3000:]
        # The broker keeps acknowledging reports while the gateway is down.
        for _ in range(5):
            send_one()

        gw = start_gateway(
            db, broker, "--chain", node.url, "--metrics-port", str(mport), env=env, batch_size=3, batch_seconds=0.5
        )
        wait_online(broker, gw)
        for _ in range(5):
            send_one()

        def all_receipted() -> bool:
            got = {
                (json.loads(p)["device"], json.loads(p)["seq"])
                for _, p in watch.of_kind("receipt")
                if json.loads(p).get("status") == "confirmed"
            }
            return set(sent) <= got

        wait_for(all_receipted, 90, "a receipt for every acknowledged report")
        wait_for(lambda: status(db)["reports"]["unbatched"] == 0, 30, "every report batched")

        # Every acknowledged report is stored exactly once, byte for byte.
        rows = query(db, "SELECT device_id, seq, cose, batch_seq FROM reports")
        assert len(rows) == len(sent) == status(db)["reports"]["accepted"]
        assert {(r[0], r[1]): bytes(r[2]) for r in rows} == sent
        assert all(r[3] is not None for r in rows)
        if point == "ingest-committed":
            # The committed but unacknowledged group came back from the broker.
            assert metric_value(metrics_text(mport), "surge_reports_duplicate_total") >= 1

        # Every batch is anchored exactly once, in order, with the stored root.
        batches = query(db, "SELECT seq, root, size, state FROM batches ORDER BY seq")
        assert [b[0] for b in batches] == list(range(1, len(batches) + 1))
        wait_for(
            lambda: all(s == "receipted" for (s,) in query(db, "SELECT state FROM batches")),
            30,
            "every batch receipted",
        )
        contract = query(db, "SELECT value FROM meta WHERE key=?", ("contract:" + node.url,))[0][0]
        chain = open_chain(node.url, key=ChainKey.from_hex(HARDHAT_KEY_0), contract=contract)
        assert chain.last_seq() == len(batches)
        for seq, root, size, _ in batches:
            assert chain.root_of(seq) == bytes(root) and chain.size_of(seq) == size
            confirmed = query(db, "SELECT tx_hash FROM anchors WHERE batch_seq=? AND state='confirmed'", (seq,))
            assert len(confirmed) == 1 and chain.anchor_tx(seq) == bytes(confirmed[0][0])
        # The contract's sequence rule: an anchored batch cannot be anchored again.
        for seq, root, size, _ in (batches[0], batches[-1]):
            with pytest.raises(AlreadyAnchored):
                chain.submit(seq, bytes(root), size)
        assert gw.poll() is None
    finally:
        watch.close()
        pub.close()
        stop(gw)
