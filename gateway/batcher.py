"""Batching stage: decide when a batch closes, compute its Merkle root.

A batch is closed in one transaction that writes the batch record and stamps
each report with its batch and leaf index, so a crash either leaves the
reports unbatched (and the next run closes the same batch) or fully batched.

When a batch closes (protocol §7.2).  The anchorer has one batch in flight
and waits for its confirmations, so the anchoring rate is (reports per batch)
/ (one anchor cycle).  Batches of a fixed ``batch_size`` would cap that rate
whatever the load; instead a batch that had to wait for the one in flight
takes every report waiting when it closes, up to ``batch_max``, so the
reports per anchor grow with the load:

* A batch is *due*, as always, when ``batch_size`` reports wait or the
  oldest has waited ``batch_seconds``.
* While a batch waits for the chain, none closes, unless ``batch_max``
  reports wait (then one of ``batch_max``: the Merkle build and the UPDATE
  that places its reports stay bounded).
* Otherwise a due batch closes.  If it became due before the previous batch
  was confirmed (it was held back: a *catch-up* batch) it takes everything
  waiting, up to ``batch_max``; else it takes ``batch_size`` reports, so at
  low load batches are exactly what ``batch_size`` and ``batch_seconds`` say.
* After a catch-up batch is confirmed, the reports that arrived before its
  confirmation close at once, all of them, even if not due: they waited a
  whole anchor cycle behind load above what ``batch_size`` carries.  So when
  load stops, everything is anchored within two anchor cycles.

Leaf order, the batch record and one root per ``batch_seq`` (+1 each) do not
change; only the moment a batch closes does.  Every input to the decision
is in the store (times of reports and confirmations), so a restarted
gateway decides the same way, and a wrong guess costs gas or latency, never
correctness.
"""

from __future__ import annotations

import logging
import time

from gateway import lifecycle
from surge_protocol import merkle
from gateway.config import GatewayConfig
from gateway.faults import crash_point
from gateway.store import Batch, Store

log = logging.getLogger("surge.gateway.batcher")

ZERO_ROOT = bytes(32)
# Largest batch by default (GatewayConfig.batch_max): a tree of 100,000 leaves
# builds in ~0.12 s (bench group 6: 1.18 s for 1,000,000) and its UPDATE holds
# the write lock for a fraction of that; at an anchor cycle of ~0.5 s this is
# 200,000 reports/s of anchoring, far above what ingest accepts.
BATCH_MAX = GatewayConfig.batch_max


class Batcher:
    def __init__(
        self, store: Store, gateway_id: str, batch_size: int, batch_seconds: float, batch_max: int = BATCH_MAX
    ) -> None:
        self.store = store
        self.gateway_id = gateway_id
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.batch_max = max(batch_max, batch_size)

    def next_size(self, now: float) -> int:
        """How many reports the batch closed now takes (0: none closes now)."""
        waiting = self.store.unbatched_count()
        if waiting == 0:
            return 0
        if self.store.first_unconfirmed() is not None:
            return self.batch_max if waiting >= self.batch_max else 0
        everything = min(waiting, self.batch_max)
        oldest = self.store.oldest_unbatched_at()
        assert oldest is not None
        nth = self.store.unbatched_received_at(self.batch_size) if waiting >= self.batch_size else None
        due_at = self._due_at(oldest, nth)
        last = self.store.last_batch()
        if last is None:
            return min(waiting, self.batch_size) if due_at <= now else 0
        confirmed_at = self._confirmed_at(last.seq)
        if oldest <= confirmed_at and self._was_catch_up(last):
            return everything
        if due_at > now:
            return 0
        return everything if due_at < confirmed_at else min(waiting, self.batch_size)

    def _due_at(self, oldest: float, nth: float | None) -> float:
        """When a batch whose oldest report came at ``oldest`` (and its batch_size-th at ``nth``) is due."""
        return min(oldest + self.batch_seconds, float("inf") if nth is None else nth)

    def _confirmed_at(self, seq: int) -> float:
        a = self.store.confirmed_anchor(seq)
        # Confirmed, then reorganised away and not yet confirmed again: treat as now.
        return time.time() if a is None else a.updated_at

    def _was_catch_up(self, b: Batch) -> bool:
        """Did batch ``b`` become due before its predecessor was confirmed?"""
        if b.seq == 1 or b.size <= self.batch_size:
            # Larger than batch_size only when it took everything; a batch of
            # batch_size or fewer left nothing behind worth hurrying for.
            return False
        due_at = self._due_at(b.first_at, self.store.leaf_received_at(b.seq, self.batch_size - 1))
        return due_at < self._confirmed_at(b.seq - 1)

    def due(self, now: float) -> bool:
        return self.next_size(now) > 0

    def close(self, now: float | None = None, limit: int | None = None) -> Batch | None:
        """Close one batch of up to ``limit`` (default ``batch_size``) unbatched reports, if any."""
        now = time.time() if now is None else now
        rows = self.store.unbatched(self.batch_size if limit is None else limit)
        if not rows:
            return None
        tree = merkle.MerkleTree([merkle.leaf_hash(cose) for _, cose, _ in rows])
        last = self.store.last_batch()
        batch = Batch(
            seq=1 if last is None else last.seq + 1,
            gateway_id=self.gateway_id,
            root=tree.root,
            size=len(rows),
            first_at=rows[0][2],
            last_at=rows[-1][2],
            prev_root=ZERO_ROOT if last is None else last.root,
            closed_at=now,
            state=lifecycle.CLOSED,
        )
        self.store.add_batch(batch, [rid for rid, _, _ in rows])
        crash_point("batch-closed")
        log.info("closed batch %d: %d reports, root %s", batch.seq, batch.size, batch.root.hex())
        return batch

    def step(self, now: float | None = None) -> list[Batch]:
        """Close every batch that is due now (more than one only while batch_max overflows)."""
        now = time.time() if now is None else now
        closed = []
        while True:
            n = self.next_size(now)
            if n == 0:
                break
            b = self.close(now, n)
            if b is None:
                break
            closed.append(b)
        return closed
