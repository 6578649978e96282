"""Batches grow with load, so anchoring keeps up (gateway/batcher.py, protocol §7.2).

The real pipeline pass (``Gateway.step``: batcher, in-process EVM, anchorer,
receipts) is driven pass by pass in this process, while reports signed with
real device keys are stored between passes the way the ingest process stores
them (``Store.commit_outcomes``).  Passes stand in for time, so nothing here
depends on how fast the machine is; the guarantees are checked on the store
and on the chain.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from surge_protocol import claims as C
from bench.gateway_throughput import presign
from surge_protocol import merkle
from gateway.chain import Web3Chain, open_chain
from gateway.config import GatewayConfig
from gateway.service import Gateway
from gateway.store import AcceptedRow, Store


class Load:
    """Pre-signed reports of a small fleet, stored in order, ``n`` at a time."""

    def __init__(self, db: Path, reports: int, devices: int) -> None:
        self.messages, publics = presign(reports, devices)
        self.devices = devices
        self.store = Store(db)
        for pub in publics:
            self.store.enroll(C.device_id(pub), pub, "rpi-4", "bench", "test")
        self.sent = 0

    def store_next(self, n: int) -> None:
        rows = []
        for i in range(self.sent, min(self.sent + n, len(self.messages))):
            topic, data = self.messages[i]
            rows.append(
                AcceptedRow(topic.split("/")[3], 1, i // self.devices, time.time(), data, False, C.prev_hash(data))
            )
        self.store.commit_outcomes(rows, [])
        self.sent += len(rows)

    @property
    def done(self) -> bool:
        return self.sent == len(self.messages)


def gateway(db: Path, chain: Web3Chain, **cfg: Any) -> Gateway:
    """The pipeline of a gateway, not started: no ingest process, no broker (messages stay queued)."""
    options: dict[str, Any] = dict(db=str(db), batch_seconds=3600.0, republish=False)
    options.update(cfg)
    return Gateway(GatewayConfig(**options), chain=chain, block_clock=chain.mine)


def batches(db: Path) -> list[tuple[int, int, bytes, str]]:
    with Store(db).db as con:
        return [
            (r[0], r[1], bytes(r[2]), r[3])
            for r in con.execute("SELECT seq, size, root, state FROM batches ORDER BY seq")
        ]


def unbatched(db: Path) -> int:
    return Store(db).unbatched_count()


def all_confirmed(db: Path, total: int) -> bool:
    rows = batches(db)
    return sum(size for _, size, _, _ in rows) == total and all(state == "confirmed" for *_, state in rows)


def receipts_sent(gw: Gateway) -> float:
    return gw.metrics.registry.get_sample_value("surge_receipts_published_total") or 0.0


def assert_exactly_once(db: Path, chain: Web3Chain, total: int) -> None:
    """Every stored report in exactly one batch, at contiguous leaves; each root on chain; every proof verifies."""
    store = Store(db)
    rows = batches(db)
    assert [seq for seq, *_ in rows] == list(range(1, len(rows) + 1))
    assert sum(size for _, size, _, _ in rows) == total == store.report_count()
    assert store.unbatched_count() == 0
    assert chain.last_seq() == len(rows)
    ids: list[int] = []
    for seq, size, root, _ in rows:
        leaves = store.batch_leaves(seq)
        assert [r.leaf_index for r in leaves] == list(range(size))
        ids += [r.id for r in leaves]
        hashes = [merkle.leaf_hash(r.cose) for r in leaves]
        tree = merkle.MerkleTree(hashes)
        onchain = chain.root_of(seq)
        assert tree.root == root == onchain
        assert chain.size_of(seq) == size
        for i, proof in enumerate(tree.proofs()):
            assert merkle.verify_inclusion(hashes[i], i, size, proof, onchain)
    assert ids == sorted(ids) and len(set(ids)) == total  # the stream's order, no report twice


@pytest.mark.timeout(240)
def test_sustained_load_on_a_slow_chain_is_anchored_in_growing_batches(tmp_path: Path) -> None:
    # 4 confirmations, one block per pass: an anchor takes about 4 passes. Batches
    # of batch_size would carry 100 / 4 = 25 reports per pass; the load is 250.
    db = tmp_path / "gw.db"
    batch_size, per_pass, load_passes = 100, 250, 40
    load = Load(db, per_pass * load_passes, 50)
    chain = open_chain("memory")
    gw = gateway(db, chain, batch_size=batch_size, confirmations=4)
    backlog = []
    for _ in range(load_passes):
        load.store_next(per_pass)
        gw.step()
        backlog.append(unbatched(db))
    assert load.done
    closed_under_load = len(batches(db))
    for _ in range(60):
        if all_confirmed(db, load.sent):
            break
        gw.step()
    assert all_confirmed(db, load.sent)
    sizes = [size for _, size, _, _ in batches(db)]
    # The backlog is what arrives during one anchor cycle, not a queue that grows.
    assert max(backlog) <= per_pass * 8, backlog
    assert max(backlog[-10:]) <= max(backlog[:15]) + per_pass, backlog
    # Batches grew with the load; after it stopped, at most two more closed.
    assert max(sizes) >= 3 * batch_size, sizes
    assert len(sizes) - closed_under_load <= 2, sizes
    assert_exactly_once(db, chain, load.sent)
    assert receipts_sent(gw) == load.sent


@pytest.mark.timeout(120)
def test_below_capacity_batches_are_exactly_batch_size(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    load = Load(db, 20 * 30, 20)
    chain = open_chain("memory")
    gw = gateway(db, chain, batch_size=50, confirmations=1)
    for _ in range(30):
        load.store_next(20)  # 50 reports every 2.5 passes; an anchor takes 1-2 passes
        gw.step()
    for _ in range(10):
        gw.step()
    sizes = [size for _, size, _, _ in batches(db)]
    assert sizes == [50] * (load.sent // 50), sizes
    assert unbatched(db) == load.sent % 50  # waits for batch_seconds, as before


@pytest.mark.timeout(120)
def test_batch_max_bounds_every_batch_and_overflow_queues_closed_batches(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    load = Load(db, 3000, 30)
    chain = open_chain("memory")
    gw = gateway(db, chain, batch_size=100, batch_max=400, confirmations=3)
    load.store_next(3000)  # far more than batch_max at once
    gw.step()
    rows = batches(db)
    assert [size for _, size, _, _ in rows] == [100] + [400] * 7  # the first, then batch_max chunks
    assert unbatched(db) == 3000 - 100 - 7 * 400
    for _ in range(60):
        if all_confirmed(db, load.sent):
            break
        gw.step()
    assert all(size <= 400 for _, size, _, _ in batches(db))
    assert_exactly_once(db, chain, load.sent)


@pytest.mark.timeout(180)
def test_reorg_under_load_reanchors_the_same_batches_and_reissues_receipts(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    load = Load(db, 3000, 30)
    chain = open_chain("memory")
    tester: Any = chain.web3.provider.ethereum_tester  # type: ignore[attr-defined]
    gw = gateway(db, chain, batch_size=100, confirmations=2)
    snapshot = tester.take_snapshot()
    while not load.done:
        load.store_next(300)
        gw.step()
    for _ in range(30):
        if all_confirmed(db, load.sent):
            break
        gw.step()
    assert all_confirmed(db, load.sent)
    before = batches(db)
    assert len(before) >= 2 and max(size for _, size, _, _ in before) > 100
    sent = receipts_sent(gw)
    assert sent == load.sent
    tester.revert_to_snapshot(snapshot)  # every anchor leaves the chain
    chain.mine(3)
    assert chain.last_seq() == 0
    for _ in range(60):
        gw.step()
        if chain.last_seq() == len(before) and all_confirmed(db, load.sent) and receipts_sent(gw) == 2 * sent:
            break
    # The same batches (seqs, sizes, roots) anchored again, each receipt sent again.
    assert [(s, n, r) for s, n, r, _ in batches(db)] == [(s, n, r) for s, n, r, _ in before]
    assert all_confirmed(db, load.sent)
    assert receipts_sent(gw) == 2 * sent
    assert_exactly_once(db, chain, load.sent)
