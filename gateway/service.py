"""The gateway: the ingest process, and the pipeline (batcher, anchorer, publisher).

Ingest runs in a child process (gateway/ingest_process.py); this process runs
the pipeline at a lower CPU priority and serves /metrics.  Each stage has its
own database connection and hands off through the store, so the gateway can
be killed at any instant and restarted: ingest resumes from the broker's
persistent session, the batcher from unbatched reports, the anchorer from its
pending records and the chain, the publisher's tail from its cursors.

On PostgreSQL several gateways form a cluster (docs/operators.md, PostgreSQL):
each ingests, and the pipeline runs on the one holding the leader lock
(gateway/db/leader.py).  A gateway that takes the lead rebuilds its stages
from the database, exactly as a restarted gateway would.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
from typing import Any, Callable

from gateway import lifecycle, receipts
from gateway.attest import AttestStage
from gateway.anchorer import Anchorer
from gateway.batcher import Batcher
from gateway.chain import ChainBackend, Web3Chain, load_chain_key, load_keystore, open_chain
from gateway.config import GatewayConfig
from gateway.db import cluster
from gateway.db.leader import Leadership
from gateway.ingest_process import IngestProcess
from gateway.metrics import Metrics
from gateway.republish import ClaimsText, Publisher, Tail, republish_anchored
from gateway.storage_audit.stage import AuditStage
from gateway.store import Anchor, Batch, Store

log = logging.getLogger("surge.gateway")

TICK_S = 0.2
# Closed batches waiting for the chain before the gateway warns that anchoring
# falls behind (batches queue only when each is at batch_max, gateway/batcher.py).
BACKLOG_WARN_BATCHES = 10


def gateway_id(store: Store, configured: str | None) -> str:
    """The configured id, else one generated once and kept in the database."""
    if configured:
        return configured
    existing = store.meta("gateway_id")
    if existing:
        return existing
    new = "gw-" + secrets.token_hex(4)
    store.set_meta("gateway_id", new)
    return new


def open_gateway_chain(cfg: GatewayConfig, store: Store) -> Web3Chain:
    """The chain backend; for JSON-RPC the contract is deployed once and remembered."""
    if cfg.chain == "memory":
        return open_chain("memory")
    key = load_keystore(cfg.keystore) if cfg.keystore else load_chain_key()
    remembered = store.meta("contract:" + cfg.chain)
    chain = open_chain(cfg.chain, key=key, contract=cfg.contract or remembered)
    if not cfg.contract and not remembered:
        store.set_meta("contract:" + cfg.chain, chain.contract_address)
        log.info("deployed SurgeAnchor at %s on chain %d", chain.contract_address, chain.chain_id)
    return chain


class Gateway:
    def __init__(
        self,
        cfg: GatewayConfig,
        chain: ChainBackend | None = None,
        log_json: bool = False,
        block_clock: Callable[[int], None] | None = None,
    ) -> None:
        """``chain``: the backend to anchor on (default: the one ``cfg`` names); ``block_clock(n)``
        makes n blocks on a chain that makes none by itself (the in-process chain, whose
        ``mine`` is used when ``cfg.chain`` is "memory" and no ``chain`` is given)."""
        self.cfg = cfg
        self.metrics = Metrics()
        self.store = Store(cfg.db)
        self.cluster = self.store.shared
        # Cluster: gateways starting together generate the id and deploy contracts once.
        with cluster.setup_lock(self.store):
            self.gateway_id = gateway_id(self.store, cfg.gateway_id)
            if chain is None:
                opened = open_gateway_chain(cfg, self.store)
                chain = opened
                if cfg.chain == "memory":
                    block_clock = opened.mine
            self.chain: ChainBackend = chain
            self.block_clock = block_clock
            if self.cluster:
                # The in-process chain makes a fresh key per process: only the id can be shared.
                cluster.check_identity(
                    self.store, self.gateway_id, None if cfg.chain == "memory" else self.chain.gateway_address
                )
                if cfg.chain == "memory":
                    log.warning(
                        "the in-process chain (chain = memory) is this gateway's own: fine for one "
                        "gateway on PostgreSQL, but a cluster's gateways must share a JSON-RPC chain "
                        "for another to take over the anchoring"
                    )
            self._build_pipeline_stages()
            self.rewards = None  # reward epochs: closing and settlement (gateway/rewards/stage.py)
            if cfg.rewards is not None:
                from gateway.rewards.stage import RewardsStage

                self.rewards = RewardsStage(cfg, self.gateway_id, self.chain, self._publish, self.metrics.registry)
        self.leadership = Leadership(cfg.db, cfg.node)  # cluster: refused if another member has this node name
        self.leading = False  # cluster: the pipeline below runs only while this gateway holds the lock
        self.ingest = IngestProcess(cfg, self.gateway_id, log_json)
        self.metrics.registry.register(self.ingest.samples)
        self.stop_event = threading.Event()
        # Batches whose receipts the broker has acknowledged (set by the publisher
        # thread, written to the store by the main loop, which owns that connection).
        self.receipted: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.exit_code = 0
        self.behind = False  # anchoring backlog warned about (_watch_backlog)
        # Storage audit (gateway/storage_audit/): its own thread and connection, off unless configured;
        # in a cluster made when this gateway takes the lead (_lead).
        self.audit: AuditStage | None = None
        self.audit_count = None
        if cfg.storage_audit:
            from gateway.metrics import StorageAuditMetrics

            self.audit_count = StorageAuditMetrics(self.metrics.registry).count
            if not self.cluster:
                self.audit = AuditStage(cfg, self.gateway_id, self.audit_count)

    def _build_pipeline_stages(self) -> None:
        """The pipeline's stages, each with its own connection, from what the database holds now."""
        cfg = self.cfg
        if not hasattr(self, "publisher"):
            self.publisher = Publisher(cfg, self.gateway_id)
        # Each accepted report is attested (signed by the chain key) before its
        # `verified` message goes out (gateway/attest.py).
        self.texts = ClaimsText() if cfg.republish else None
        self.attest = AttestStage(
            Store(cfg.db),
            self.gateway_id,
            self.chain.gateway_address,
            self.chain.attest,
            on_claims=self.texts.put if self.texts else None,
        )
        self.tail = Tail(Store(cfg.db), self.publisher, cfg.republish, lambda: self.attest.cursor, self.texts)
        self.batcher = Batcher(Store(cfg.db), self.gateway_id, cfg.batch_size, cfg.batch_seconds, cfg.batch_max)
        self.anchor_store = Store(cfg.db)
        self.anchorer = Anchorer(
            self.anchor_store,
            self.chain,
            cfg.confirmations,
            self.metrics,
            self._confirmed,
            self._reorged,
            drop_after_s=cfg.anchor_timeout_s,
        )

    def _close_pipeline_stages(self) -> None:
        for store in (self.attest.store, self.tail.store, self.batcher.store, self.anchor_store):
            try:
                store.close()
            except Exception as exc:  # a connection the server already dropped: nothing left to close
                log.debug("closing a pipeline stage's store: %s", exc)

    def _lead(self) -> bool:
        """Cluster: whether this gateway runs the pipeline in this pass (taking or losing the lead)."""
        leading = self.leadership.poll()
        if leading and not self.leading:
            # Whatever the previous leader left (unbatched reports, an anchor in
            # flight, unsent receipts) is in the database: start from it.
            self._close_pipeline_stages()
            self._build_pipeline_stages()
            if self.rewards is not None:
                from gateway.rewards.stage import RewardsStage

                old = self.rewards
                old.store.close()
                self.rewards = RewardsStage(self.cfg, self.gateway_id, self.chain, self._publish)
                # The series registered on /metrics at start keep counting.
                self.rewards.closed, self.rewards.confirmed = old.closed, old.confirmed
                self.rewards.reorged, self.rewards.pending = old.reorged, old.pending
            self._resend_receipts()
            if self.cfg.storage_audit:
                self.audit = AuditStage(self.cfg, self.gateway_id, self.audit_count)
                self.audit.start()
        elif not leading and self.leading:
            if self.audit is not None:
                self.audit.stop()
                self.audit = None
        self.leading = leading
        return leading

    def _publish(self, topic: str, payload: bytes) -> None:
        # Queued for the publisher's own connection and thread (gateway/republish.py).
        self.publisher.publish(topic, payload)

    def _confirmed(self, batch: Batch, anchor: Anchor) -> None:
        from gateway import rotation

        rotation.apply_confirmed(self.anchor_store, batch)  # key rotation, protocol §3.1
        leaves = self.anchor_store.batch_leaves(batch.seq)  # read once for receipts and republishing
        sent = receipts.publish_confirmed(self.anchor_store, batch, anchor, self._publish, leaves)
        self.metrics.receipts.inc(sent)
        if self.cfg.republish:
            republish_anchored(self.anchor_store, batch, anchor, self._publish, leaves, self.texts)
        # 'receipted' only once the broker has every receipt: a crash before that
        # leaves the batch 'confirmed', and the next start sends them again.
        self.publisher.after_sent(lambda: self.receipted.put(batch.seq))

    def _reorged(self, batch: Batch, anchor: Anchor) -> None:
        receipts.batch_event(self.anchor_store, batch, "reorged", self._publish, anchor)

    def _resend_receipts(self) -> None:
        # Confirmed before a crash, receipts possibly unsent: send them (again).
        for b in self.anchor_store.batches(lifecycle.CONFIRMED):
            a = self.anchor_store.confirmed_anchor(b.seq)
            if a is not None:
                self._confirmed(b, a)

    def start(self) -> None:
        if self.cfg.metrics_port:
            self.metrics.serve(self.cfg.metrics_port)
        log.info(
            "gateway %s: broker %s, db %s, chain %s (id %d, contract %s), batches of %d or %.0f s, %d confirmations",
            self.gateway_id,
            self.cfg.broker,
            self.cfg.db,
            getattr(self.chain, "endpoint", "?"),
            self.chain.chain_id,
            self.chain.contract_address,
            self.cfg.batch_size,
            self.cfg.batch_seconds,
            self.cfg.confirmations,
        )
        self.ingest.start()
        if self.cfg.pipeline_nice:
            # Ingest acknowledges first; this thread, and the publisher thread it
            # starts next, take the CPU it leaves (Linux nice values are per thread).
            # At 10 the pipeline still took ~10% of a contended core from ingest
            # during bursts, at 19 ~1.5% (docs/performance.md).
            os.nice(self.cfg.pipeline_nice)
        self.publisher.start()
        if self.audit is not None:
            self.audit.start()  # after nice: a thread inherits its creator's priority

    def step(self) -> None:
        now = time.time()
        self._attest_step()
        self.tail.step()
        self._close_batches(now)
        waiting = self.anchor_store.unconfirmed_count()
        if self.block_clock is not None and waiting:
            # The in-process chain makes blocks only for transactions; one empty
            # block per pass stands in for block time so confirmations advance
            # (only while an anchor waits: py-evm spends milliseconds on each).
            self.block_clock(1)
        confirmed = self.anchorer.confirmed_count
        self.anchorer.step(now)
        if self.anchorer.confirmed_count != confirmed and self._close_batches(now):
            # The batch in flight was confirmed: the next one (everything that
            # waited behind it) closes and goes out in this pass, not the next.
            self.anchorer.step(now)
        if self.rewards is not None:
            self.rewards.step(now)
        self._watch_backlog(waiting)
        while not self.receipted.empty():
            self.anchor_store.mark_receipted(self.receipted.get())
        self.metrics.unbatched.set(self.batcher.store.unbatched_count())

    def _close_batches(self, now: float) -> int:
        closed = self.batcher.step(now)
        for b in closed:
            self.metrics.batches.inc()
            self.metrics.batch_size.observe(b.size)
            receipts.batch_event(self.batcher.store, b, "closed", self._publish)
        return len(closed)

    def _attest_step(self) -> None:
        self.attest.step()
        for (fleet, key), n in self.attest.drain().items():
            self.metrics.attest.count(fleet, key, n)

    def _watch_backlog(self, waiting: int) -> None:
        # One batch is anchored at a time and waits for its confirmations; the
        # next takes everything that waited behind it, up to batch_max.  Closed
        # batches queue only when more than batch_max reports arrive per anchor
        # cycle (or the chain stalls): say so once per episode, with the remedy.
        if waiting >= BACKLOG_WARN_BATCHES and not self.behind:
            self.behind = True
            log.warning(
                "anchoring falls behind: %d closed batches wait for the chain (one is anchored at a time, "
                "each waits for %d confirmations, each already holds batch_max = %d reports); if this "
                "lasts, raise batch_max so that each anchor carries more reports, or check the chain's "
                "block rate",
                waiting,
                self.cfg.confirmations,
                self.batcher.batch_max,
            )
        elif waiting <= 1 and self.behind:
            self.behind = False
            log.info("anchoring caught up")

    def run(self, duration: float | None = None) -> None:
        self.start()
        if not self.cluster:
            self._resend_receipts()
        deadline = None if duration is None else time.monotonic() + duration
        last_prune = 0.0
        failing = False
        while not self.stop_event.is_set():
            try:
                if self.cluster and not self._lead():
                    self.stop_event.wait(TICK_S)  # another gateway leads; ingest goes on in the child
                    if deadline is not None and time.monotonic() >= deadline:
                        break
                    if self.ingest.exited.is_set() and not self.ingest.stopping and not self.stop_event.is_set():
                        log.error(
                            "the ingest process exited (%s); stopping the gateway (its supervisor restarts it)",
                            self.ingest.returncode,
                        )
                        self.exit_code = 1
                        break
                    continue
                self.step()
                if time.monotonic() - last_prune > 60:
                    # Inside the try: on a full disk this fails too, and must not end the process.
                    last_prune = time.monotonic()
                    self.anchor_store.prune_rejections()
                if failing:
                    log.info("batcher/anchorer passes succeed again")
                failing = False
            except Exception:
                # A stage bug (or a full disk) must not take ingest down with it; it is
                # retried next pass, and logged once per episode, not every 0.2 s.
                if not failing:
                    log.exception("batcher/anchorer pass failed; retrying quietly until it succeeds")
                failing = True
            if deadline is not None and time.monotonic() >= deadline:
                break
            if self.ingest.exited.is_set() and not self.ingest.stopping and not self.stop_event.is_set():
                log.error(
                    "the ingest process exited (%s); stopping the gateway (its supervisor restarts it)",
                    self.ingest.returncode,
                )
                self.exit_code = 1
                break
            self.stop_event.wait(TICK_S)
        self.shutdown()

    def shutdown(self) -> None:
        if self.audit is not None:
            self.audit.stop()
        self.ingest.stop()
        if self.leading or not self.cluster:
            try:
                self._attest_step()
                self.tail.step()  # what ingest stored last still goes out
            except Exception:
                log.exception("could not queue the last stored reports for publishing")
        self.publisher.stop()
        self.leadership.release()
        log.info("gateway %s stopped", self.gateway_id)


def status(store: Store) -> dict[str, Any]:
    """What `surge gateway status` prints."""
    from gateway.attest import attestation_counts, probe_counts

    devices = store.devices()
    by_state = store.batch_state_counts()
    last = store.last_batch()
    a = store.last_confirmed_anchor()
    last_anchor = (
        None
        if a is None
        else {
            "batch_seq": a.batch_seq,
            "tx_hash": a.tx_hash.hex() if a.tx_hash else None,
            "block_number": a.block_number,
            "chain_id": a.chain_id,
            "contract": a.contract,
        }
    )
    return {
        "db": store.path_for_humans(),
        "gateway_id": store.meta("gateway_id"),
        "devices": {
            "enrolled": len(devices),
            "active": sum(1 for d in devices if d.active),
            "revoked": sum(1 for d in devices if not d.active),
        },
        "reports": {"accepted": store.report_count(), "unbatched": store.unbatched_count()},
        "rejections": store.rejection_counts(),
        "batches": {"total": sum(by_state.values()), "by_state": by_state, "last": last.record() if last else None},
        "last_confirmed_anchor": last_anchor,
        "attestations": attestation_counts(store),
        "probes": probe_counts(store),
        "storage_audit": _storage_audit_counts(store),
        "recent_rejections": [
            {"at": r.at, "device": r.device_id, "reason": r.reason, "detail": r.detail}
            for r in store.recent_rejections(10)
        ],
        "pid": os.getpid(),
    }


def _storage_audit_counts(store: Store) -> dict[str, dict[str, int]]:
    """Storage audit outcomes per fleet (gateway/storage_audit, docs/operators.md)."""
    from gateway.storage_audit.ledger import Ledger

    return Ledger(store).counts()
