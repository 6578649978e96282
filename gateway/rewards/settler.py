"""Settlement stage: anchor each closed epoch's root on SurgeRewards, exactly once, in order.

The same machinery as batch anchoring (gateway/anchorer.py), re-implemented
against the rewards contract: the contract accepts epoch ``n`` only after
``n - 1``, so one epoch is in flight at a time; the pending record is written
*before* the transaction is sent, and after a crash the record and the chain
(``last_epoch``, ``root_of``, the EpochPublished event) say whether it landed.
A transaction with no receipt after ``drop_after_s``, or whose block left the
canonical chain, is marked dropped and the epoch is published again with the
same (epoch, root, leaves, total); a confirmed epoch the chain no longer has
(reorg, or a fresh in-process chain) is published again and announced
``reorged``.  At K confirmations the gateway signs the chain fields, which is
what makes the ``chain`` part of a reward proof verifiable offline.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from gateway import lifecycle as L
from gateway.chain import ChainError, ChainUnavailable, Receipt
from gateway.receipts import canonical
from gateway.rewards.chain_errors import AlreadyPublished, Underfunded
from gateway.rewards.closer import StoredEpoch, epochs, stored_epoch
from gateway.store import Store

log = logging.getLogger("surge.gateway.rewards")

DROP_AFTER_S = 120.0
REORG_WINDOW = 16
REORG_CHECK_S = 1.0


class EpochChain(Protocol):
    """What settlement needs of the rewards chain client (gateway/rewards/chain.py RewardsChain)."""

    @property
    def chain_id(self) -> int: ...
    @property
    def contract_address(self) -> str: ...
    @property
    def gateway_address(self) -> str: ...
    def publish(self, epoch: int, root: bytes, leaves: int, total: int) -> bytes: ...
    def receipt(self, tx_hash: bytes) -> Receipt | None: ...
    def head(self) -> int: ...
    def is_canonical(self, block_number: int, block_hash: bytes) -> bool: ...
    def epoch_tx(self, epoch: int, from_block: int = 0) -> bytes | None: ...
    def last_epoch(self) -> int: ...
    def root_of(self, epoch: int) -> bytes: ...


@dataclass(frozen=True)
class EpochAnchor:
    id: int
    epoch: int
    chain_id: int
    contract: str
    gateway_address: str
    state: str  # submitting | submitted | mined | confirmed | dropped
    tx_hash: bytes | None
    block_number: int | None
    block_hash: bytes | None
    attestation: bytes | None  # gateway signature over {"epoch": header, "chain": chain_fields}
    created_at: float
    updated_at: float

    def chain_fields(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "contract": self.contract,
            "gateway_address": self.gateway_address,
            "tx_hash": self.tx_hash.hex() if self.tx_hash else None,
            "block_number": self.block_number,
        }


def confirmation_message(header: dict[str, Any], chain: dict[str, Any]) -> bytes:
    """What the gateway signs when an epoch's root is K deep (reward proofs carry it)."""
    return canonical({"epoch": header, "chain": chain})


_COLS = (
    "id, epoch, chain_id, contract, gateway_address, state, tx_hash, block_number, block_hash, attestation, "
    "created_at, updated_at"
)


def _anchor(r: Any) -> EpochAnchor:
    def b(v: Any) -> bytes | None:
        return None if v is None else bytes(v)

    return EpochAnchor(r[0], r[1], r[2], r[3], r[4], r[5], b(r[6]), r[7], b(r[8]), b(r[9]), r[10], r[11])


def confirmed_anchor(store: Store, epoch: int) -> EpochAnchor | None:
    r = store.db.execute(
        "SELECT %s FROM reward_anchors WHERE epoch=? AND state='confirmed' ORDER BY id DESC LIMIT 1" % _COLS, (epoch,)
    ).fetchone()
    return None if r is None else _anchor(r)


def anchors(store: Store, epoch: int) -> list[EpochAnchor]:
    return [
        _anchor(r)
        for r in store.db.execute("SELECT %s FROM reward_anchors WHERE epoch=? ORDER BY id" % _COLS, (epoch,))
    ]


def _live(store: Store, epoch: int) -> EpochAnchor | None:
    r = store.db.execute(
        "SELECT %s FROM reward_anchors WHERE epoch=? AND state != 'dropped' ORDER BY id DESC LIMIT 1" % _COLS, (epoch,)
    ).fetchone()
    return None if r is None else _anchor(r)


def _update(
    store: Store,
    a: EpochAnchor,
    state: str,
    tx_hash: bytes | None = None,
    block_number: int | None = None,
    block_hash: bytes | None = None,
    attestation: bytes | None = None,
) -> None:
    with store._tx():
        (current,) = store.db.execute("SELECT state FROM reward_anchors WHERE id=?", (a.id,)).fetchone()
        L.check_anchor_move(current, state)
        store.db.execute(
            "UPDATE reward_anchors SET state=?, tx_hash=COALESCE(?, tx_hash), block_number=?, "
            "block_hash=?, attestation=?, updated_at=? WHERE id=?",
            (state, tx_hash, block_number, block_hash, attestation, time.time(), a.id),
        )
        store.db.execute("UPDATE reward_epochs SET state=? WHERE epoch=?", (L.epoch_state(state), a.epoch))


Event = Callable[[str, StoredEpoch, "EpochAnchor | None"], None]


class Settler:
    def __init__(
        self,
        store: Store,
        chain: EpochChain,
        confirmations: int,
        sign: Callable[[bytes], bytes],
        on_event: Event | None = None,
        drop_after_s: float = DROP_AFTER_S,
    ) -> None:
        self.store = store
        self.chain = chain
        self.confirmations = confirmations
        self.sign = sign
        self.on_event = on_event
        self.drop_after_s = drop_after_s
        self.chain_down = False
        self.errors = 0
        self._checked_at = float("-inf")
        self._passes = 0
        # Epoch the contract's balance could not cover (SurgeRewards' Underfunded), and how often: the
        # operator is told once per epoch, the epoch waits (in order) and goes out after a top-up.
        self.underfunded: int | None = None
        self.underfunded_count = 0

    def _here(self, a: EpochAnchor) -> bool:
        return a.chain_id == self.chain.chain_id and a.contract.lower() == self.chain.contract_address.lower()

    def _emit(self, event: str, e: StoredEpoch, a: EpochAnchor | None) -> None:
        if self.on_event is not None:
            self.on_event(event, e, a)

    def pending(self) -> int:
        return int(self.store.db.execute("SELECT COUNT(*) FROM reward_epochs WHERE state != 'confirmed'").fetchone()[0])

    def step(self, now: float | None = None) -> None:
        """One pass; chain outages are logged once and retried on the next pass."""
        now = time.time() if now is None else now
        try:
            self._check_reorgs(now)
            self._advance(now)
            if self.chain_down:
                log.info("rewards chain reachable again")
                self.chain_down = False
        except ChainUnavailable as exc:
            self.errors += 1
            if not self.chain_down:
                log.warning("rewards chain unavailable: %s; will retry", exc)
            self.chain_down = True

    def _reset_from(self, epoch: int, why: str) -> None:
        for e in epochs(self.store, epoch):
            for a in anchors(self.store, e.epoch):
                if a.state != L.DROPPED:
                    _update(self.store, a, L.DROPPED, block_number=a.block_number, block_hash=a.block_hash)
                    if a.state == L.CONFIRMED:
                        self._emit("reorged", e, a)
        log.warning("publishing reward epochs again from %d: %s", epoch, why)

    def _check_reorgs(self, now: float) -> None:
        if now - self._checked_at < REORG_CHECK_S and not self.chain_down:
            return
        self._checked_at = now
        self._passes += 1
        recent = [e for e in reversed(epochs(self.store, 0)[-REORG_WINDOW:]) if e.state == L.CONFIRMED][::-1]
        if not recent:
            return
        onchain = self.chain.last_epoch()
        lost = [e.epoch for e in recent if e.epoch > onchain]
        if lost:
            self._reset_from(lost[0], "the chain's last epoch is %d, below confirmed epoch %d" % (onchain, lost[0]))
            return
        for e in recent if self._passes % REORG_WINDOW == 1 else recent[-1:]:
            a = confirmed_anchor(self.store, e.epoch)
            if a is None or not self._here(a) or a.block_number is None or a.block_hash is None:
                self._reset_from(e.epoch, "epoch %d was published on another chain or contract" % e.epoch)
                return
            if not self.chain.is_canonical(a.block_number, a.block_hash) or self.chain.root_of(e.epoch) != e.root:
                self._reset_from(e.epoch, "block %d of epoch %d left the canonical chain" % (a.block_number, e.epoch))
                return

    def _advance(self, now: float) -> None:
        while True:
            r = self.store.db.execute(
                "SELECT epoch FROM reward_epochs WHERE state != 'confirmed' ORDER BY epoch LIMIT 1"
            ).fetchone()
            if r is None:
                return
            e = stored_epoch(self.store, int(r[0]))
            assert e is not None
            if not self._advance_epoch(e, now):
                return

    def _begin(self, e: StoredEpoch) -> EpochAnchor:
        now = time.time()
        with self.store._tx():
            rid = self.store.insert_id(
                "INSERT INTO reward_anchors(epoch, chain_id, contract, gateway_address, state, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, 'submitting', ?, ?)",
                (e.epoch, self.chain.chain_id, self.chain.contract_address, self.chain.gateway_address, now, now),
            )
        r = self.store.db.execute("SELECT %s FROM reward_anchors WHERE id=?" % _COLS, (rid,)).fetchone()
        return _anchor(r)

    def _advance_epoch(self, e: StoredEpoch, now: float) -> bool:
        """Move one epoch forward; True when it is confirmed and the next may go."""
        a = _live(self.store, e.epoch)
        if a is not None and not self._here(a):
            _update(self.store, a, L.DROPPED)
            a = None
        if a is None or a.state == L.SUBMITTING:
            return self._submit(e, a)
        assert a.tx_hash is not None
        try:
            rc = self.chain.receipt(a.tx_hash)
        except ChainUnavailable:
            raise
        except ChainError as exc:  # mined but reverted: a duplicate raced in; the chain decides next pass
            log.warning("reward epoch %d: %s", e.epoch, exc)
            _update(self.store, a, L.DROPPED)
            return False
        if rc is None:
            if a.state == L.MINED or now - a.updated_at > self.drop_after_s:
                log.warning("epoch tx %s for reward epoch %d vanished; sending again", a.tx_hash.hex(), e.epoch)
                _update(self.store, a, L.DROPPED)
            return False
        depth = self.chain.head() - rc.block_number + 1
        if depth < self.confirmations:
            if a.state != L.MINED or a.block_hash != rc.block_hash:
                _update(self.store, a, L.MINED, block_number=rc.block_number, block_hash=rc.block_hash)
            return False
        done = EpochAnchor(
            a.id,
            a.epoch,
            a.chain_id,
            a.contract,
            a.gateway_address,
            L.CONFIRMED,
            a.tx_hash,
            rc.block_number,
            rc.block_hash,
            None,
            a.created_at,
            now,
        )
        signature = self.sign(confirmation_message(e.header, done.chain_fields()))
        _update(
            self.store, a, L.CONFIRMED, block_number=rc.block_number, block_hash=rc.block_hash, attestation=signature
        )
        log.info("reward epoch %d confirmed in block %d (%d confirmations)", e.epoch, rc.block_number, depth)
        confirmed = confirmed_anchor(self.store, e.epoch)
        e2 = stored_epoch(self.store, e.epoch)
        assert confirmed is not None and e2 is not None
        self._emit("confirmed", e2, confirmed)
        return True

    def _submit(self, e: StoredEpoch, a: EpochAnchor | None) -> bool:
        onchain = self.chain.last_epoch()
        if onchain >= e.epoch:
            # Sent before a crash (or by the attempt now being retried) and mined.
            if self.chain.root_of(e.epoch) != e.root:
                raise ChainError(
                    "reward epoch %d is on chain with a different root: another process publishes "
                    "with this gateway's key; stopping" % e.epoch
                )
            tx = self.chain.epoch_tx(e.epoch)
            if tx is None:
                return False
            if a is None:
                a = self._begin(e)
            _update(self.store, a, L.SUBMITTED, tx_hash=tx)
            return False
        if onchain < e.epoch - 1:
            self._reset_from(onchain + 1, "the chain's last epoch is %d, below epoch %d" % (onchain, e.epoch - 1))
            return False
        if a is None:
            a = self._begin(e)
        try:
            tx = self.chain.publish(e.epoch, e.root, e.leaves, e.total)
        except ChainUnavailable:
            raise
        except AlreadyPublished:
            return False  # mined meanwhile; the next pass finds it via root_of
        except Underfunded as exc:
            self.underfunded_count += 1
            if self.underfunded != e.epoch:
                log.warning("reward epoch %d waits: %s", e.epoch, exc)
            self.underfunded = e.epoch
            return False
        if self.underfunded == e.epoch:
            log.info("reward epoch %d is covered by the contract's balance again; publishing", e.epoch)
            self.underfunded = None
        _update(self.store, a, L.SUBMITTED, tx_hash=tx)
        log.info("reward epoch %d submitted: tx %s", e.epoch, tx.hex())
        return False
