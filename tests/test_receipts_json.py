"""Receipts are put together from their parts (gateway/receipts.py); the text must be exactly
``json.dumps`` of the receipt object docs/protocol.md describes, for any batch."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from surge_protocol import claims as C
from gateway import receipts
from surge_protocol import merkle
from gateway.batcher import Batcher
from gateway.store import AcceptedRow, Store
from gw_helpers import Device


def expected(rep, batch, anchor, proof):  # type: ignore[no-untyped-def]
    return json.dumps(
        {
            "v": 1,
            "status": "confirmed",
            "device": rep.device_id,
            "boot": rep.boot,
            "seq": rep.seq,
            "leaf_hash": merkle.leaf_hash(rep.cose).hex(),
            "batch_seq": batch.seq,
            "leaf_index": rep.leaf_index,
            "tree_size": batch.size,
            "proof": [p.hex() for p in proof],
            "root": batch.root.hex(),
            "gateway_id": batch.gateway_id,
            "chain": receipts.anchor_fields(anchor),
            "gateway_signature": anchor.attestation.hex() if anchor.attestation else None,
        },
        separators=(",", ":"),
    ).encode()


@settings(max_examples=25, deadline=None)
@given(
    gateway_id=st.text(min_size=1, max_size=12),
    size=st.integers(1, 40),
    signed=st.booleans(),
    block=st.integers(0, 2**40),
)
def test_receipt_text_is_the_receipt_object(gateway_id: str, size: int, signed: bool, block: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "gw.db")
        devices = [Device(board="rpi-4") for _ in range(3)]
        for d in devices:
            store.enroll(d.id, d.key.public, d.board, d.fleet, "")
        rows = []
        for i in range(size):
            d = devices[i % 3]
            data = d.report()
            rows.append(AcceptedRow(d.id, d.boot, d.seq - 1, 100.0 + i, data, False, C.prev_hash(data)))
        store.commit_outcomes(rows, [])
        batch = Batcher(store, gateway_id, size, 1).close(200.0)
        assert batch is not None
        aid = store.begin_anchor(batch.seq, 31337, "0x" + "ab" * 20, "0x" + "cd" * 20)
        store.update_anchor(aid, "submitted", tx_hash=b"\x01" * 32)
        store.update_anchor(
            aid, "confirmed", block_number=block, block_hash=b"\x02" * 32, attestation=b"\x03" * 65 if signed else None
        )
        anchor = store.anchor(aid)
        leaves = store.batch_leaves(batch.seq)
        proofs = merkle.MerkleTree([merkle.leaf_hash(r.cose) for r in leaves]).proofs()
        got = list(receipts.receipts(store, batch, anchor))
        assert [(f, dev) for f, dev, _ in got] == [(devices[i % 3].fleet, r.device_id) for i, r in enumerate(leaves)]
        assert [t for _, _, t in got] == [expected(r, batch, anchor, p) for r, p in zip(leaves, proofs)]
        store.close()
