"""The gateway against hardhat's node over JSON-RPC: anchoring, confirmation
after K blocks, a reorg that takes a confirmed anchor away (evm_snapshot /
evm_revert) and an RPC outage the gateway rides out.

Hardhat's node mines one block per transaction and none otherwise, so the
tests mine blocks themselves (evm_mine) to make confirmations advance.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


from broker import Mosquitto, free_port
from gateway.chain import ChainKey, open_chain
from gw_helpers import Collector, Device
from gw_process import (
    HARDHAT_KEY_0,
    HARDHAT_KEY_1,
    AckPublisher,
    HardhatNode,
    Miner,
    TcpProxy,
    enroll,
    gateway_log,
    metric_value,
    metrics_text,
    query,
    rpc,
    start_gateway,
    stop,
    surge,
    wait_for,
    wait_online,
)

K = 3  # confirmations


def contract_of(db: Path, chain_url: str) -> str:
    rows = query(db, "SELECT value FROM meta WHERE key=?", ("contract:" + chain_url,))
    assert rows, "the gateway did not remember its contract"
    return str(rows[0][0])


def confirmed_receipts(watch: Collector) -> list[dict[str, Any]]:
    out = []
    for _, payload in watch.of_kind("receipt"):
        rec = json.loads(payload)
        if rec.get("status") == "confirmed":
            out.append(rec)
    return out


def test_anchor_confirm_and_reanchor_after_reorg(tmp_path: Path, broker: Mosquitto, node: HardhatNode) -> None:
    db = tmp_path / "gw.db"
    devs = [Device(), Device(board="rpi-4")]
    for d in devs:
        enroll(db, d)
    env = dict(os.environ, SURGE_CHAIN_KEY=HARDHAT_KEY_0)
    gw = start_gateway(db, broker, "--chain", node.url, env=env, batch_size=4, batch_seconds=3600, confirmations=K)
    watch = Collector(broker.port, "surge/v1/+/+/receipt")
    pub = AckPublisher(broker.port)
    try:
        wait_online(broker, gw)
        chain = open_chain(node.url, key=ChainKey.from_hex(HARDHAT_KEY_0), contract=contract_of(db, node.url))
        snapshot = rpc(node.url, "evm_snapshot")
        # Blocks after the snapshot, so that the anchor's first block is not
        # the one at the same height after the revert.
        node.mine(3)

        sent = []
        for _ in range(2):
            for d in devs:
                data = d.report()
                pub.send(d.topic, data)
                sent.append((d.id, d.seq - 1))
        # Automining puts the anchor in a block at once; it is 1 deep, not K.
        wait_for(
            lambda: query(db, "SELECT block_number FROM anchors WHERE batch_seq=1 AND state='mined'"),
            30,
            "the anchor to be mined",
        )
        assert query(db, "SELECT state FROM batches WHERE seq=1") == [("anchoring",)]
        assert confirmed_receipts(watch) == []

        def mine_until(pred: Any, what: str) -> Any:
            def step() -> Any:
                got = pred()
                if not got:
                    node.mine(1)
                return got

            return wait_for(step, 60, what, interval=0.2)

        mine_until(lambda: len(confirmed_receipts(watch)) == len(sent), "receipts of batch 1")
        first = confirmed_receipts(watch)
        assert {(r["device"], r["seq"]) for r in first} == set(sent)
        tx1 = {r["chain"]["tx_hash"] for r in first}
        block1 = {r["chain"]["block_number"] for r in first}
        assert len(tx1) == 1 and len(block1) == 1
        (anchored_tx,) = query(db, "SELECT tx_hash FROM anchors WHERE batch_seq=1 AND state='confirmed'")[0]
        assert bytes(anchored_tx).hex() in tx1
        (root,) = query(db, "SELECT root FROM batches WHERE seq=1")[0]
        assert chain.last_seq() == 1 and chain.root_of(1) == bytes(root)

        # A bundle checks out against the node.
        bundle = tmp_path / "proof.json"
        dev_id, seq = sent[0]
        surge("proof", "--db", str(db), "--device", dev_id, "--boot", "1", "--seq", str(seq), "--out", str(bundle))
        out = surge("verify", str(bundle), "--rpc", node.url).stdout
        assert out.startswith("VALID") and "root matches" in out, out

        # Reorg: the chain goes back to before the anchor and grows again without it.
        assert rpc(node.url, "evm_revert", [snapshot]) is True
        mine_until(lambda: len(confirmed_receipts(watch)) == 2 * len(sent), "receipts re-issued after the reorg")
        second = confirmed_receipts(watch)[len(sent) :]
        assert {(r["device"], r["seq"]) for r in second} == set(sent)
        tx2 = {r["chain"]["tx_hash"] for r in second}
        block2 = {r["chain"]["block_number"] for r in second}
        # The re-sent transaction may hash the same as the first (same nonce, fee
        # and data sign to the same bytes: hardhat then mines the identical
        # transaction again); what is guaranteed is that it is in a block of the
        # new chain, and the first anchor's block is no longer canonical.
        assert len(tx2) == 1 and len(block2) == 1
        ((old_number, old_hash),) = query(
            db, "SELECT block_number, block_hash FROM anchors WHERE batch_seq=1 AND state='dropped'"
        )
        assert old_number == next(iter(block1))
        assert not chain.is_canonical(old_number, bytes(old_hash))
        # Same batch, same root, same proofs; only where it sits on chain changed.
        key = lambda r: (r["device"], r["seq"])  # noqa: E731
        for a, b in zip(sorted(first, key=key), sorted(second, key=key)):
            assert (a["root"], a["proof"], a["leaf_index"], a["batch_seq"]) == (
                b["root"],
                b["proof"],
                b["leaf_index"],
                b["batch_seq"],
            )
        assert chain.last_seq() == 1 and chain.root_of(1) == bytes(root)
        (new_tx,) = tx2
        assert chain.anchor_tx(1) == bytes.fromhex(new_tx)
        rc = chain.receipt(bytes.fromhex(new_tx))
        assert rc is not None and chain.is_canonical(rc.block_number, rc.block_hash)
        assert block2 == {rc.block_number}
        ((new_hash,),) = query(db, "SELECT block_hash FROM anchors WHERE batch_seq=1 AND state='confirmed'")
        assert bytes(new_hash) == rc.block_hash
        assert chain.head() - rc.block_number + 1 >= K
        states = [s for (s,) in query(db, "SELECT state FROM anchors WHERE batch_seq=1 ORDER BY id")]
        assert states == ["dropped", "confirmed"], states
        assert "re-anchoring from batch 1" in gateway_log(db)
        assert gw.poll() is None
    finally:
        watch.close()
        pub.close()
        stop(gw)


def test_rpc_outage_is_ridden_out(tmp_path: Path, broker: Mosquitto, node: HardhatNode) -> None:
    """The endpoint goes away (a relay in between is cut; the node keeps its state)."""
    db = tmp_path / "gw.db"
    devs = [Device(), Device()]
    for d in devs:
        enroll(db, d)
    # The chain key from an encrypted keystore this time.
    keystore = tmp_path / "gateway-key.json"
    password = "correct horse battery staple"
    keystore.write_text(json.dumps(ChainKey.from_hex(HARDHAT_KEY_1).encrypt(password)))
    env = dict(os.environ, SURGE_KEYSTORE_PASSWORD=password)
    env.pop("SURGE_CHAIN_KEY", None)
    proxy = TcpProxy(node.port)
    mport = free_port()
    miner = Miner(node)
    gw = start_gateway(
        db,
        broker,
        "--chain",
        proxy.url,
        "--keystore",
        str(keystore),
        "--metrics-port",
        str(mport),
        env=env,
        batch_size=2,
        batch_seconds=3600,
        confirmations=K,
    )
    watch = Collector(broker.port, "surge/v1/+/+/receipt")
    pub = AckPublisher(broker.port)
    try:
        wait_online(broker, gw)
        chain = open_chain(node.url, key=ChainKey.from_hex(HARDHAT_KEY_1), contract=contract_of(db, proxy.url))
        for d in devs:
            pub.send(d.topic, d.report())
        wait_for(lambda: len(confirmed_receipts(watch)) == 2, 60, "batch 1 confirmed")

        proxy.cut()
        errors_before = metric_value(metrics_text(mport), "surge_chain_errors_total")
        for _ in range(2):
            for d in devs:
                pub.send(d.topic, d.report())
        # Ingest goes on: stored (hence acknowledged) while the chain is away; one
        # batch closes and waits for the chain, the rest wait behind it, unbatched
        # (they go in the next batch once it is confirmed, gateway/batcher.py).
        wait_for(lambda: query(db, "SELECT COUNT(*) FROM reports") == [(6,)], 30, "the reports stored")
        wait_for(
            lambda: query(db, "SELECT seq, state FROM batches WHERE seq > 1") == [(2, "closed")],
            30,
            "batch 2 closed during the outage",
        )
        assert query(db, "SELECT COUNT(*) FROM reports WHERE batch_seq IS NULL") == [(2,)]
        # Several anchoring passes fail...
        wait_for(
            lambda: metric_value(metrics_text(mport), "surge_chain_errors_total") >= errors_before + 5,
            30,
            "failed chain passes",
        )
        assert gw.poll() is None and proxy.refused >= 1
        assert len(confirmed_receipts(watch)) == 2
        # ...and the outage is logged once, not once per pass.
        assert gateway_log(db).count("chain unavailable") == 1, gateway_log(db)[-3000:]

        # The endpoint comes back: the waiting batches are anchored, in order, once.
        proxy.restore()
        wait_for(lambda: len(confirmed_receipts(watch)) == 6, 60, "receipts after the outage")
        assert chain.last_seq() == 3
        for seq, root in query(db, "SELECT seq, root FROM batches ORDER BY seq"):
            assert chain.root_of(seq) == bytes(root)
        log = gateway_log(db)
        assert log.count("chain unavailable") == 1 and log.count("chain endpoint reachable again") == 1
        assert HARDHAT_KEY_1 not in log and password not in log
    finally:
        watch.close()
        pub.close()
        stop(gw)
        miner.stop()
        proxy.close()
