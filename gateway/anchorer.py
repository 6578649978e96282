"""Anchoring stage: put each closed batch's root on chain, exactly once, in order.

The contract accepts batch ``n`` only after ``n - 1``, so batches are anchored
strictly in sequence, one in flight at a time (the batcher sizes batches so
that this keeps up with any load, gateway/batcher.py).  For every attempt the pending
record is written *before* the transaction is sent; after a crash the record
tells whether a send may have happened, and the chain (``last_seq`` and
``root_of``) tells whether it landed.  A transaction that disappears (dropped,
or reorganised away) is marked dropped and the batch is sent again; so is a
confirmed batch whose block later leaves the canonical chain, or that a fresh
chain (the in-process one after a restart) never saw.  Receipts follow every
confirmation, including re-confirmations.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Callable

from gateway.chain import AlreadyAnchored, AnchorReverted, ChainBackend, ChainError, ChainUnavailable
from gateway import lifecycle as L
from gateway.faults import crash_point
from gateway.metrics import Metrics
from gateway.receipts import anchor_fields, attestation_message
from gateway.store import Anchor, Batch, Store

log = logging.getLogger("surge.gateway.anchorer")

# A submitted transaction with no receipt after this long is presumed dropped.
DROP_AFTER_S = 120.0
# How many recent confirmed batches are re-checked for reorgs on every pass.
REORG_WINDOW = 16
# Shortest time between two reorg checks.
REORG_CHECK_S = 1.0


class Anchorer:
    def __init__(
        self,
        store: Store,
        chain: ChainBackend,
        confirmations: int,
        metrics: Metrics,
        on_confirmed: Callable[[Batch, Anchor], None],
        on_reorged: Callable[[Batch, Anchor], None] | None = None,
        drop_after_s: float = DROP_AFTER_S,
    ) -> None:
        self.store = store
        self.chain = chain
        self.confirmations = confirmations
        self.metrics = metrics
        self.on_confirmed = on_confirmed
        self.on_reorged = on_reorged
        self.drop_after_s = drop_after_s
        self.chain_down = False
        self._checked_head = -1
        self._checked_at = float("-inf")
        self._idle = 0
        self._passes = 0
        self.confirmed_count = 0  # confirmations seen by this process (the gateway closes the next batch on one)

    def _here(self, a: Anchor) -> bool:
        return a.chain_id == self.chain.chain_id and a.contract.lower() == self.chain.contract_address.lower()

    def step(self, now: float | None = None) -> None:
        """One pass; chain outages are logged and retried on the next pass."""
        now = time.time() if now is None else now
        try:
            self._check_reorgs(now)
            self._advance(now)
            if self.chain_down:
                log.info("chain endpoint reachable again")
                self.chain_down = False
        except ChainUnavailable as exc:
            self.metrics.chain_errors.inc()
            if not self.chain_down:
                log.warning("chain unavailable: %s; will retry", exc)
            self.chain_down = True
        self.metrics.pending_anchors.set(self.store.unconfirmed_count())

    def _reset_from(self, seq: int, why: str) -> None:
        """Forget confirmations from batch ``seq`` on: they will be anchored again."""
        self.metrics.anchors_resubmitted.inc()
        for b in self.store.batches(from_seq=seq):
            for a in self.store.anchors(b.seq):
                if a.state != L.DROPPED:
                    self.store.update_anchor(a.id, L.DROPPED, block_number=a.block_number, block_hash=a.block_hash)
                    if a.state == L.CONFIRMED and self.on_reorged is not None:
                        self.on_reorged(b, a)
            if b.state != L.CLOSED:
                self.store.set_batch_state(b.seq, L.CLOSED)
        log.warning("re-anchoring from batch %d: %s", seq, why)

    def _check_reorgs(self, now: float) -> None:
        # Little can have changed on chain unless its head moved; still look every
        # 25 passes (~5 s), since a reorg can leave the head at the same height.
        # At most once a second otherwise: the in-process chain makes a block every
        # pass, and each look costs three calls into py-evm.
        # While the chain is down every pass asks, so that a success means it is back.
        self._idle += 1
        if now - self._checked_at < REORG_CHECK_S and self._idle < 25 and not self.chain_down:
            return
        head = self.chain.head()
        if head == self._checked_head and self._idle < 25:
            return
        self._checked_head = head
        self._checked_at = now
        self._idle = 0
        self._passes += 1
        recent = self.store.recent_confirmed(REORG_WINDOW)
        if not recent:
            return
        onchain = self.chain.last_seq()
        lost = self.store.first_confirmed_above(onchain)
        if lost is not None:
            # A fresh chain (the in-process one after a restart) or a deep reorg.
            self._reset_from(lost, "chain's last batch is %d, below confirmed batch %d" % (onchain, lost))
            return
        # The newest confirmed anchor on every new head; the whole window now and
        # then (each check is two RPC calls, and a pass runs five times a second).
        for b in recent if self._passes % REORG_WINDOW == 1 else recent[-1:]:
            a = self.store.confirmed_anchor(b.seq)
            if a is None or not self._here(a) or a.block_number is None or a.block_hash is None:
                self._reset_from(b.seq, "batch %d was anchored on another chain or contract" % b.seq)
                return
            if not self.chain.is_canonical(a.block_number, a.block_hash) or self.chain.root_of(b.seq) != b.root:
                self._reset_from(b.seq, "block %d of batch %d left the canonical chain" % (a.block_number, b.seq))
                return

    def _advance(self, now: float) -> None:
        while True:
            b = self.store.first_unconfirmed()
            if b is None or not self._advance_batch(b, now):
                return

    def _advance_batch(self, b: Batch, now: float) -> bool:
        """Move one batch forward; True when it is confirmed and the next may go."""
        a = self.store.live_anchor(b.seq)
        if a is not None and not self._here(a):
            self.store.update_anchor(a.id, L.DROPPED)
            a = None
        if a is None or a.state == L.SUBMITTING:
            return self._submit(b, a)
        assert a.tx_hash is not None
        try:
            rc = self.chain.receipt(a.tx_hash)
        except AnchorReverted as exc:
            log.warning("%s", exc)
            self.store.update_anchor(a.id, L.DROPPED)
            return False
        if rc is None:
            if a.state == L.MINED or now - a.updated_at > self.drop_after_s:
                log.warning("anchor tx %s for batch %d vanished; sending again", a.tx_hash.hex(), b.seq)
                self.store.update_anchor(a.id, L.DROPPED)
                self.metrics.anchors_resubmitted.inc()
            return False
        depth = self.chain.head() - rc.block_number + 1
        if depth < self.confirmations:
            if a.state != L.MINED or a.block_hash != rc.block_hash:
                self.store.update_anchor(
                    a.id, L.MINED, block_number=rc.block_number, block_hash=rc.block_hash, gas_used=rc.gas_used
                )
            return False
        done = replace(a, block_number=rc.block_number, block_hash=rc.block_hash, gas_used=rc.gas_used)
        attestation = self.chain.attest(attestation_message(b, anchor_fields(done)))
        self.store.update_anchor(
            a.id,
            L.CONFIRMED,
            block_number=rc.block_number,
            block_hash=rc.block_hash,
            gas_used=rc.gas_used,
            attestation=attestation,
        )
        self.metrics.anchors_confirmed.inc()
        self.confirmed_count += 1
        self.metrics.gas_used.inc(rc.gas_used)
        self.metrics.time_to_anchor.observe(max(0.0, time.time() - b.closed_at))
        log.info(
            "batch %d confirmed in block %d (%d confirmations, %d gas)", b.seq, rc.block_number, depth, rc.gas_used
        )
        confirmed = self.store.confirmed_anchor(b.seq)
        assert confirmed is not None
        self.on_confirmed(b, confirmed)
        return True

    def _begin(self, b: Batch) -> int:
        return self.store.begin_anchor(
            b.seq, self.chain.chain_id, self.chain.contract_address, self.chain.gateway_address
        )

    def _submit(self, b: Batch, a: Anchor | None) -> bool:
        onchain = self.chain.last_seq()
        if onchain >= b.seq:
            # Sent before a crash (or by the attempt now being retried) and mined.
            if self.chain.root_of(b.seq) != b.root:
                raise ChainError(
                    "batch %d is on chain with a different root: another process is "
                    "anchoring with this gateway's key; stopping" % b.seq
                )
            tx = self.chain.anchor_tx(b.seq)
            if tx is None:
                return False
            if a is None:
                a = self.store.anchor(self._begin(b))
            self.store.update_anchor(a.id, L.SUBMITTED, tx_hash=tx)
            return False
        if onchain < b.seq - 1:
            self._reset_from(onchain + 1, "chain's last batch is %d, below batch %d" % (onchain, b.seq - 1))
            return False
        if a is None:
            a = self.store.anchor(self._begin(b))
        try:
            tx = self.chain.submit(b.seq, b.root, b.size)
        except AlreadyAnchored:
            return False  # mined meanwhile; the next pass finds it via root_of
        crash_point("anchor-submitted")
        self.store.update_anchor(a.id, L.SUBMITTED, tx_hash=tx)
        log.info("batch %d submitted: tx %s", b.seq, tx.hex())
        crash_point("anchor-recorded")
        return False
