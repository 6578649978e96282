"""Chain faults against hardhat's node: a reorg deeper than the confirmation
depth, followed by the endpoint going away for a while.

(The shallow reorg and the plain outage are in tests/test_gateway_hardhat.py.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from broker import Mosquitto
from gateway.chain import ChainKey, open_chain
from gw_helpers import Collector, Device
from gw_process import (
    HARDHAT_KEY_0,
    AckPublisher,
    HardhatNode,
    TcpProxy,
    enroll,
    gateway_log,
    query,
    rpc,
    start_gateway,
    stop,
    wait_for,
    wait_online,
)

K = 3


def confirmed(watch: Collector) -> list[dict[str, Any]]:
    return [r for r in (json.loads(p) for _, p in watch.of_kind("receipt")) if r.get("status") == "confirmed"]


@pytest.mark.timeout(240)
def test_reorg_deeper_than_confirmations_then_outage(tmp_path: Path, broker: Mosquitto, node: HardhatNode) -> None:
    db = tmp_path / "gw.db"
    devs = [Device(), Device(board="rpi-4")]
    for d in devs:
        enroll(db, d)
    proxy = TcpProxy(node.port)
    env = dict(os.environ, SURGE_CHAIN_KEY=HARDHAT_KEY_0)
    gw = start_gateway(db, broker, "--chain", proxy.url, env=env, batch_size=2, batch_seconds=3600, confirmations=K)
    watch = Collector(broker.port, "surge/v1/#")
    pub = AckPublisher(broker.port)

    def mine_until(pred: Any, what: str, timeout: float = 60) -> Any:
        def step() -> Any:
            got = pred()
            if not got:
                node.mine(1)
            return got

        return wait_for(step, timeout, what, interval=0.2)

    try:
        wait_online(broker, gw)
        contract = query(db, "SELECT value FROM meta WHERE key=?", ("contract:" + proxy.url,))[0][0]
        chain = open_chain(node.url, key=ChainKey.from_hex(HARDHAT_KEY_0), contract=contract)
        snapshot = rpc(node.url, "evm_snapshot")
        node.mine(2)
        sent = []
        for _ in range(2):  # two batches of two
            for d in devs:
                pub.send(d.topic, d.report())
                sent.append((d.id, d.seq - 1))
        mine_until(lambda: len(confirmed(watch)) == 4, "both batches confirmed")
        first = {(r["device"], r["seq"]): r for r in confirmed(watch)}
        # Bury the anchors far deeper than K, then take the whole stretch away.
        node.mine(K + 7)
        blocks = [r["chain"]["block_number"] for r in first.values()]
        assert node.head() - max(blocks) + 1 > K + 5
        assert rpc(node.url, "evm_revert", [snapshot]) is True
        assert chain.last_seq() == 0
        mine_until(lambda: len(confirmed(watch)) == 8, "receipts re-issued for both batches")
        second = {(r["device"], r["seq"]): r for r in confirmed(watch)[4:]}
        assert set(second) == set(first) == set(sent)
        for k, r in second.items():
            a = first[k]
            # Same leaf, same proof, same root: only the anchoring was redone.
            assert (r["root"], r["proof"], r["leaf_index"], r["batch_seq"]) == (
                a["root"],
                a["proof"],
                a["leaf_index"],
                a["batch_seq"],
            )
            # The re-sent transaction may hash the same as the first one (same nonce,
            # fee and data sign to the same bytes); what matters is that the receipt
            # names a transaction the current chain holds, in the block it says.
            mined = rpc(node.url, "eth_getTransactionReceipt", ["0x" + r["chain"]["tx_hash"]])
            assert mined is not None and int(mined["blockNumber"], 16) == r["chain"]["block_number"]
            assert int(mined["status"], 16) == 1
        reorged = [json.loads(p) for _, p in watch.of_kind("batches") if json.loads(p)["event"] == "reorged"]
        assert {e["batch"]["batch_seq"] for e in reorged} == {1, 2}
        assert "re-anchoring from batch 1" in gateway_log(db)

        # Then the endpoint goes away for a while: reports are still stored and batched...
        proxy.cut()
        for d in devs:
            pub.send(d.topic, d.report())
            sent.append((d.id, d.seq - 1))
        wait_for(
            lambda: query(db, "SELECT COUNT(*) FROM batches WHERE state='closed'") == [(1,)],
            30,
            "batch 3 closed during the outage",
        )
        wait_for(lambda: "chain unavailable" in gateway_log(db), 30, "the outage noticed")
        # ...and anchoring resumes when it is back.
        proxy.restore()
        mine_until(lambda: len(confirmed(watch)) == 10, "batch 3 anchored after the outage")
        assert chain.last_seq() == 3
        for seq, root in query(db, "SELECT seq, root FROM batches ORDER BY seq"):
            assert chain.root_of(seq) == bytes(root)
            assert len(query(db, "SELECT 1 FROM anchors WHERE batch_seq=? AND state='confirmed'", (seq,))) == 1
            assert chain.anchor_tx(seq) is not None
        assert gw.poll() is None
    finally:
        watch.close()
        pub.close()
        stop(gw)
        proxy.close()
