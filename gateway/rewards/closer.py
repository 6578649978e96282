"""Epoch closing stage: confirmed batches + attestations + owners -> a signed epoch file, durably.

Epoch n covers the batches after epoch n-1's last batch up to the last one
whose final report arrived before the epoch's end.  Its window is
``epoch_seconds`` long, aligned to multiples of ``epoch_seconds`` since 1970
(starting no earlier than the previous epoch's end); a window with no batch
at all produces no epoch.  An epoch closes once its end is ``CLOSE_GRACE_S``
past, no report received before the end is still unbatched and every batch
it covers is confirmed on chain.

Batches are assigned by sequence number, never twice: a batch that shows up
late still lands in the next epoch.  The file, the epoch row and the owners'
new cumulative amounts are written in one transaction, so a crash leaves
either the whole epoch or none of it, and closing again after a crash
produces the same bytes (the inputs are what the store holds, the signature
is deterministic, RFC 6979).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import cbor2

from surge_protocol import claims as C
from gateway import envelope
from gateway import lifecycle as L
from gateway.rewards import epoch as E
from gateway.rewards import formula as F
from gateway.store import Store

log = logging.getLogger("surge.gateway.rewards")

# Seconds after an epoch's end before it may close: a report accepted just
# before the end is committed (and batched) within this.
CLOSE_GRACE_S = 2.0
SKIPPED_META = "rewards:skipped"  # windows that closed before anyone had earned: {"end_ms", "last_batch"}
CONFIRMED = (L.CONFIRMED, L.RECEIPTED)


@dataclass(frozen=True)
class StoredEpoch:
    epoch: int
    start_ms: int
    end_ms: int
    last_batch: int
    root: bytes
    leaves: int
    total: int  # cumulative total over all leaves
    file: bytes
    state: str  # closed | confirmed
    closed_at: float

    @property
    def header(self) -> dict[str, Any]:
        return E.header_of(self.file)


_COLS = "epoch, start_ms, end_ms, last_batch, root, leaves, total, file, state, closed_at"


def _epoch(r: Any) -> StoredEpoch:
    return StoredEpoch(r[0], r[1], r[2], r[3], bytes(r[4]), r[5], int(r[6]), bytes(r[7]), r[8], r[9])


def epochs(store: Store, from_epoch: int = 0) -> list[StoredEpoch]:
    return [
        _epoch(r)
        for r in store.db.execute("SELECT %s FROM reward_epochs WHERE epoch >= ? ORDER BY epoch" % _COLS, (from_epoch,))
    ]


def stored_epoch(store: Store, n: int) -> StoredEpoch | None:
    r = store.db.execute("SELECT %s FROM reward_epochs WHERE epoch=?" % _COLS, (n,)).fetchone()
    return None if r is None else _epoch(r)


def last_epoch(store: Store) -> StoredEpoch | None:
    r = store.db.execute("SELECT %s FROM reward_epochs ORDER BY epoch DESC LIMIT 1" % _COLS).fetchone()
    return None if r is None else _epoch(r)


def cumulative(store: Store) -> dict[str, int]:
    return {r[0]: int(r[1]) for r in store.db.execute("SELECT owner, cumulative FROM reward_cumulative")}


def _ms(t: float) -> int:
    return round(t * 1000)  # as in the batch record (gateway/store.py Batch.record)


def _lower_median(values: list[int]) -> int:
    values.sort()
    return values[(len(values) - 1) // 2]


def _interval(cose: bytes) -> int:
    # Stored reports passed every check at ingest (determinism included): decode, do not re-check.
    payload = envelope.payload_at(cose)
    try:
        claims = cbor2.loads(payload if payload is not None else envelope.parse(cose).payload)
        value = claims[C.SURGE][C.INTERVAL]
    except Exception:  # stored reports were verified on the way in; a surprise counts as no claim
        return 0
    return value if isinstance(value, int) and value > 0 else 0


class _Acc:
    __slots__ = (
        "reports",
        "attested",
        "interval",
        "storage",
        "bw",
        "flags",
        "passed",
        "failed",
        "timed_out",
        "excluded",
        "keys",
    )

    def __init__(self) -> None:
        self.reports = self.attested = self.interval = self.passed = self.failed = self.timed_out = 0
        self.storage: list[int] = []
        self.bw: list[int] = []
        self.flags: set[str] = set()
        self.excluded: list[tuple[int, int, str]] = []
        self.keys: list[tuple[int, int]] = []


def device_inputs(store: Store, after_batch: int, last_batch: int) -> list[E.DeviceInputs]:
    """Every device's attested figures over batches (after_batch, last_batch]; claims count only for coverage."""
    acc: dict[str, _Acc] = {}
    rows = store.db.execute(
        "SELECT r.device_id, r.boot, r.seq, r.cose, a.report_id, a.storage_bytes, a.bw_up, a.flags, "
        "a.challenges_passed, a.challenges_failed, a.challenges_timed_out FROM reports r "
        "LEFT JOIN attestations a ON a.report_id = r.id WHERE r.batch_seq > ? AND r.batch_seq <= ? ORDER BY r.id",
        (after_batch, last_batch),
    )
    for dev, boot, seq, cose, att, storage, bw, flags, passed, failed, timed_out in rows:
        a = acc.get(dev)
        if a is None:
            a = acc[dev] = _Acc()
        a.reports += 1
        a.keys.append((boot, seq))
        a.interval = max(a.interval, _interval(bytes(cose)))
        if att is None:
            a.excluded.append((boot, seq, E.NOT_ATTESTED))
            continue
        a.attested += 1
        a.storage.append(int(storage))
        if bw is not None:
            a.bw.append(int(bw))
        a.flags.update(x for x in str(flags).split(",") if x)
        a.passed += passed
        a.failed += failed
        a.timed_out += timed_out
    owners = {r[0]: (r[1], r[2]) for r in store.db.execute("SELECT device_id, owner, board FROM devices")}
    out = []
    for dev, a in acc.items():
        owner, board = owners.get(dev, ("", "unknown"))
        owner = E.checksum_owner(owner) or owner
        excluded = a.excluded
        reason = E.ineligible_reason(owner)
        if reason is not None:
            # Every report of the device earns nothing, for the device's reason.
            excluded = [(b, s, reason) for b, s in a.keys]
        out.append(
            E.DeviceInputs(
                device=dev,
                owner=owner,
                board=board,
                reports=a.reports,
                attested=a.attested,
                interval_s=a.interval,
                storage_bytes=_lower_median(a.storage) if a.storage else 0,
                bw_up=_lower_median(a.bw) if a.bw else None,
                flags=tuple(sorted(a.flags)),
                challenges_passed=a.passed,
                challenges_failed=a.failed,
                challenges_timed_out=a.timed_out,
                excluded=tuple(excluded),
            )
        )
    return out


def position(store: Store) -> tuple[int, int, int, bytes]:
    """(next epoch number, earliest start ms, last batch already covered, previous root)."""
    last = last_epoch(store)
    n, start, batch, root = (
        (1, 0, 0, E.ZERO_ROOT) if last is None else (last.epoch + 1, last.end_ms, last.last_batch, last.root)
    )
    skipped = store.meta(SKIPPED_META)
    if skipped:
        s = json.loads(skipped)
        if s["last_batch"] > batch:
            start, batch = max(start, s["end_ms"]), s["last_batch"]
    return n, start, batch, root


def uncovered_batches(store: Store) -> int:
    """Batches no epoch (or skipped window) covers yet: they wait for their window to end."""
    _, _, after, _ = position(store)
    return int(store.db.execute("SELECT COUNT(*) FROM batches WHERE seq > ?", (after,)).fetchone()[0])


class EpochCloser:
    def __init__(
        self,
        store: Store,
        gateway_id: str,
        gateway_address: str,
        formula: F.Formula,
        epoch_seconds: float,
        sign: E.Signer,
        grace_s: float = CLOSE_GRACE_S,
    ) -> None:
        if epoch_seconds <= 0:
            raise ValueError("epoch_seconds must be positive")
        self.store = store
        self.gateway_id = gateway_id
        self.gateway_address = gateway_address
        self.formula = formula
        self.epoch_ms = max(1, round(epoch_seconds * 1000))
        self.sign = sign
        self.grace_ms = round(grace_s * 1000)

    def _position(self) -> tuple[int, int, int, bytes]:
        return position(self.store)

    def next_window(self) -> tuple[int, int, int] | None:
        """(start ms, end ms, last batch) of the next epoch as the store stands, or None (no batch yet)."""
        _, earliest, after, _ = self._position()
        first = self.store.db.execute("SELECT MIN(seq) FROM batches WHERE seq > ?", (after,)).fetchone()[0]
        if first is None:
            return None
        b = self.store.batch(int(first))
        assert b is not None
        base = _ms(b.last_at) // self.epoch_ms * self.epoch_ms
        start, end = max(earliest, base), base + self.epoch_ms
        covered = [
            (seq, last_at)
            for seq, last_at in self.store.db.execute(
                "SELECT seq, last_at FROM batches WHERE seq > ? AND last_at < ? ORDER BY seq", (after, end / 1000 + 1)
            )
        ]
        last = max((seq for seq, last_at in covered if _ms(last_at) < end), default=int(first))
        return start, end, last

    def ready(self, window: tuple[int, int, int], now: float) -> bool:
        start, end, last = window
        if _ms(now) < end + self.grace_ms:
            return False
        if self.store.db.execute(
            "SELECT 1 FROM reports WHERE batch_seq IS NULL AND received_at < ? LIMIT 1", (end / 1000,)
        ).fetchone():
            return False
        _, _, after, _ = self._position()
        waiting = self.store.db.execute(
            "SELECT COUNT(*) FROM batches WHERE seq > ? AND seq <= ? AND state NOT IN ('confirmed', 'receipted')",
            (after, last),
        ).fetchone()[0]
        return int(waiting) == 0

    def build(self, window: tuple[int, int, int]) -> E.EpochRecord:
        """The next epoch's record over ``window`` from the store (no writes)."""
        n, _, after, prev_root = self._position()
        start, end, last = window
        batches = [
            {"batch_seq": b.seq, "root": b.root.hex(), "size": b.size}
            for b in self.store.batches(from_seq=after + 1)
            if b.seq <= last
        ]
        return E.build(
            self.gateway_id,
            self.gateway_address,
            n,
            start,
            end,
            self.formula,
            batches,
            device_inputs(self.store, after, last),
            cumulative(self.store),
            prev_root,
        )

    def close(self, window: tuple[int, int, int], now: float | None = None) -> StoredEpoch | None:
        """Close the next epoch over ``window``; None when nobody has earned yet (the window is skipped)."""
        now = time.time() if now is None else now
        rec = self.build(window)
        start, end, last = window
        if rec.header["leaves"] == 0:
            self.store.set_meta(SKIPPED_META, json.dumps({"end_ms": end, "last_batch": last}))
            log.info("reward window %d..%d: no owner has earned yet, no epoch", start, end)
            return None
        raw = E.seal(rec, self.sign)
        amounts = [(o, int(a)) for o, a in rec.body["outputs"]["amounts"]]
        cum = dict((o, int(a)) for o, a in rec.body["outputs"]["cumulative"])
        with self.store._tx():
            self.store.db.execute(
                "INSERT INTO reward_epochs(%s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'closed', ?)" % _COLS,
                (rec.epoch, start, end, last, rec.root, rec.header["leaves"], rec.header["cumulative_total"], raw, now),
            )
            self.store.db.executemany(
                "INSERT INTO reward_cumulative(owner, cumulative, epoch) VALUES (?, ?, ?) ON CONFLICT(owner) "
                "DO UPDATE SET cumulative=excluded.cumulative, epoch=excluded.epoch",
                [(o, str(cum[o]), rec.epoch) for o, _ in amounts],
            )
        log.info(
            "closed reward epoch %d (%d..%d): batches to %d, %d leaves, %s allocated, root %s",
            rec.epoch,
            start,
            end,
            last,
            rec.header["leaves"],
            rec.header["allocated"],
            rec.header["root"],
        )
        st = stored_epoch(self.store, rec.epoch)
        assert st is not None
        return st

    def step(self, now: float | None = None, limit: int = 10) -> list[StoredEpoch]:
        """Close every epoch that is due (at most ``limit`` per pass, so a long outage catches up in steps)."""
        now = time.time() if now is None else now
        closed: list[StoredEpoch] = []
        for _ in range(limit):
            window = self.next_window()
            if window is None or not self.ready(window, now):
                break
            st = self.close(window, now)
            if st is not None:
                closed.append(st)
        return closed
