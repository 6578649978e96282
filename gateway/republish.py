"""Republish accepted reports as JSON for integrators once their batch is anchored."""

from __future__ import annotations

from typing import Callable

from agent import claims as C
from gateway import envelope
from gateway.store import Anchor, Batch, Device, Store
from gateway.ingest import verified_json
from gateway.receipts import anchor_fields
from gateway.verify import Accepted


def republish_anchored(store: Store, batch: Batch, anchor: Anchor, publish: Callable[[str, bytes], None]) -> None:
    """Each report of a confirmed batch again on its verified topic, now with ``batch`` filled in."""
    info = {"status": "confirmed", "batch_seq": batch.seq, "tree_size": batch.size, "root": batch.root.hex(),
            "gateway_id": batch.gateway_id, **anchor_fields(anchor)}
    devices: dict[str, Device] = {}
    for rep in store.batch_leaves(batch.seq):
        dev = devices.get(rep.device_id) or store.device(rep.device_id)
        if dev is None:
            continue
        devices[rep.device_id] = dev
        claims = envelope.parse(rep.cose).claims
        acc = Accepted(dev, rep.boot, rep.seq, claims, False, "", C.prev_hash(rep.cose), rep.cose)
        publish("surge/v1/%s/%s/verified" % (dev.fleet, dev.device_id),
                verified_json(acc, dev.fleet, rep.received_at, dict(info, leaf_index=rep.leaf_index)))
