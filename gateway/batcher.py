"""Batching stage: close a batch at N reports or T seconds, compute its Merkle root.

A batch is closed in one transaction that writes the batch record and stamps
each report with its batch and leaf index, so a crash either leaves the
reports unbatched (and the next run closes the same batch) or fully batched.
"""

from __future__ import annotations

import logging
import time

from gateway import merkle
from gateway.faults import crash_point
from gateway.store import Batch, Store

log = logging.getLogger("surge.gateway.batcher")

ZERO_ROOT = bytes(32)


class Batcher:
    def __init__(self, store: Store, gateway_id: str, batch_size: int, batch_seconds: float) -> None:
        self.store = store
        self.gateway_id = gateway_id
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds

    def due(self, now: float) -> bool:
        oldest = self.store.oldest_unbatched_at()
        if oldest is None:
            return False
        return now - oldest >= self.batch_seconds or self.store.unbatched_count() >= self.batch_size

    def close(self, now: float | None = None) -> Batch | None:
        """Close one batch of up to ``batch_size`` unbatched reports, if any."""
        now = time.time() if now is None else now
        rows = self.store.unbatched(self.batch_size)
        if not rows:
            return None
        tree = merkle.MerkleTree([merkle.leaf_hash(cose) for _, cose, _ in rows])
        last = self.store.last_batch()
        batch = Batch(
            seq=1 if last is None else last.seq + 1, gateway_id=self.gateway_id, root=tree.root,
            size=len(rows), first_at=rows[0][2], last_at=rows[-1][2],
            prev_root=ZERO_ROOT if last is None else last.root, closed_at=now, state="closed")
        self.store.add_batch(batch, [rid for rid, _, _ in rows])
        crash_point("batch-closed")
        log.info("closed batch %d: %d reports, root %s", batch.seq, batch.size, batch.root.hex())
        return batch

    def step(self, now: float | None = None) -> list[Batch]:
        """Close every batch that is due now."""
        now = time.time() if now is None else now
        closed = []
        while self.due(now):
            b = self.close(now)
            if b is None:
                break
            closed.append(b)
        return closed
