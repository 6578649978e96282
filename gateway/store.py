"""Durable state of the gateway: SQLite in WAL mode (or PostgreSQL) with versioned migrations.

One file holds everything a restarted gateway needs: the device registry, the
exact COSE bytes of every accepted report, a bounded audit trail of
rejections, batches with their Merkle roots, and anchoring attempts.  Every
stage hands off to the next through these tables, so a crash at any point
resumes from what was committed.

The same statements run on PostgreSQL when the database is a postgresql://
URL (gateway/db/): then several gateways share one database, and the unique
(device_id, boot, seq) key makes each report accepted once across all of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from gateway import lifecycle
from gateway.db import Connection, is_postgres
from gateway.db import StoreError as StoreError  # re-exported: callers import it from here
from gateway.db import connect
from gateway.db.schema import MIGRATIONS as MIGRATIONS, SCHEMA_VERSION as SCHEMA_VERSION  # re-exported

# Audit rows kept per rejection table; counts are kept forever.
MAX_REJECTIONS = 10_000
# PostgreSQL pg_advisory_xact_lock key taken by every ingest commit ("surge-out" in ASCII).
OUTCOMES_LOCK = 0x7375726765_6F7574


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    pubkey: bytes
    board: str
    fleet: str
    owner: str
    enrolled_at: float
    revoked_at: float | None
    next_pubkey: bytes | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class DeviceState:
    boot: int
    seq: int
    last_hash: bytes


@dataclass(frozen=True, slots=True)
class StoredReport:
    id: int
    device_id: str
    boot: int
    seq: int
    received_at: float
    cose: bytes
    batch_seq: int | None
    leaf_index: int | None


@dataclass(frozen=True, slots=True)
class Batch:
    seq: int
    gateway_id: str
    root: bytes
    size: int
    first_at: float
    last_at: float
    prev_root: bytes
    closed_at: float
    state: str

    def record(self) -> dict[str, Any]:
        """The batch record as it appears in receipts and proof bundles.

        Times are integer milliseconds: floats print differently across JSON
        libraries, and this record is signed in canonical JSON form.
        """
        return {
            "gateway_id": self.gateway_id,
            "batch_seq": self.seq,
            "root": self.root.hex(),
            "size": self.size,
            "first_at": round(self.first_at * 1000),
            "last_at": round(self.last_at * 1000),
            "prev_root": self.prev_root.hex(),
        }


@dataclass(frozen=True, slots=True)
class Anchor:
    id: int
    batch_seq: int
    chain_id: int
    contract: str
    gateway_address: str
    state: str  # submitting | submitted | mined | confirmed | dropped
    tx_hash: bytes | None
    block_number: int | None
    block_hash: bytes | None
    gas_used: int | None
    attestation: bytes | None  # gateway signature over the anchored batch (receipts.attestation_message)
    created_at: float
    updated_at: float


def _device(row: Sequence[Any]) -> Device:
    return Device(
        row[0], bytes(row[1]), row[2], row[3], row[4], row[5], row[6], bytes(row[7]) if row[7] is not None else None
    )


_DEVICE_COLS = "device_id, pubkey, board, fleet, owner, enrolled_at, revoked_at, next_pubkey"
_ANCHOR_COLS = (
    "id, batch_seq, chain_id, contract, gateway_address, state, tx_hash, block_number, "
    "block_hash, gas_used, attestation, created_at, updated_at"
)
_BATCH_COLS = "seq, gateway_id, root, size, first_at, last_at, prev_root, closed_at, state"


def _anchor(row: Sequence[Any]) -> Anchor:
    return Anchor(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        bytes(row[6]) if row[6] is not None else None,
        row[7],
        bytes(row[8]) if row[8] is not None else None,
        row[9],
        bytes(row[10]) if row[10] is not None else None,
        row[11],
        row[12],
    )


def _batch(row: Sequence[Any]) -> Batch:
    return Batch(row[0], row[1], bytes(row[2]), row[3], row[4], row[5], bytes(row[6]), row[7], row[8])


@dataclass(frozen=True, slots=True)
class AcceptedRow:
    device_id: str
    boot: int
    seq: int
    received_at: float
    cose: bytes
    gap: bool
    report_hash: bytes


@dataclass(frozen=True, slots=True)
class RejectedRow:
    at: float
    topic: str
    device_id: str | None
    reason: str
    detail: str
    payload: bytes | None
    payload_sha256: str | None = None  # of the whole message; payload is capped


class Store:
    """Typed access to the gateway database; one instance per thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        # A cluster's database (PostgreSQL) is written by every gateway at once.
        self.shared = is_postgres(self.path)
        self.db: Connection = connect(self.path)

    def close(self) -> None:
        self.db.close()

    def path_for_humans(self) -> str:
        """The database as a log line or error names it (a URL without its password)."""
        if self.shared:
            from gateway.db.postgres import redact

            return redact(self.path)
        return self.path

    def _tx(self) -> "_Tx":
        return _Tx(self.db, "BEGIN" if self.shared else "BEGIN IMMEDIATE")

    def insert_id(self, sql: str, params: Sequence[Any]) -> int:
        """Run one INSERT into a table with an ``id`` key and return the new row's id."""
        if self.shared:
            return int(self.db.execute(sql + " RETURNING id", params).fetchone()[0])
        return int(getattr(self.db.execute(sql, params), "lastrowid", 0) or 0)

    # -- meta ---------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._tx():
            self.db.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, value),
            )

    def meta_setdefault(self, key: str, value: str) -> str:
        """The stored value of ``key``, storing ``value`` first if there is none (first writer wins)."""
        with self._tx():
            self.db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING", (key, value))
        stored = self.meta(key)
        assert stored is not None
        return stored

    # -- registry -----------------------------------------------------------
    def bump_registry(self) -> None:
        """Inside a transaction that changes devices: the ingest process drops its cache."""
        self.db.execute(
            "INSERT INTO meta(key, value) VALUES ('registry_version', '1') "
            "ON CONFLICT(key) DO UPDATE SET value=CAST(meta.value AS INTEGER) + 1"
        )

    def enroll(self, device_id: str, pubkey: bytes, board: str, fleet: str, owner: str) -> Device:
        with self._tx():
            row = self.db.execute(
                "SELECT %s FROM devices WHERE device_id=? OR pubkey=?" % _DEVICE_COLS, (device_id, pubkey)
            ).fetchone()
            if row is not None:
                existing = _device(row)
                if existing.pubkey == pubkey and existing.device_id == device_id and existing.active:
                    return existing  # enrolling twice is harmless
                if existing.pubkey == pubkey and not existing.active:
                    raise StoreError(
                        "device %s was revoked; a revoked key cannot be enrolled again (generate a new key)" % device_id
                    )
                raise StoreError("device id %s is already enrolled with a different key" % device_id)
            self.db.execute(
                "INSERT INTO devices(device_id, pubkey, board, fleet, owner, enrolled_at) VALUES (?, ?, ?, ?, ?, ?)",
                (device_id, pubkey, board, fleet, owner, time.time()),
            )
            self.bump_registry()
        dev = self.device(device_id)
        assert dev is not None
        return dev

    def revoke(self, device_id: str) -> Device:
        with self._tx():
            cur = self.db.execute(
                "UPDATE devices SET revoked_at=? WHERE device_id=? AND revoked_at IS NULL", (time.time(), device_id)
            )
            if cur.rowcount == 0 and self.device(device_id) is None:
                raise StoreError("no device %s is enrolled" % device_id)
            self.bump_registry()
        dev = self.device(device_id)
        assert dev is not None
        return dev

    def device(self, device_id: str) -> Device | None:
        row = self.db.execute("SELECT %s FROM devices WHERE device_id=?" % _DEVICE_COLS, (device_id,)).fetchone()
        return None if row is None else _device(row)

    def devices(self) -> list[Device]:
        return [_device(r) for r in self.db.execute("SELECT %s FROM devices ORDER BY enrolled_at" % _DEVICE_COLS)]

    def device_state(self, device_id: str) -> DeviceState | None:
        row = self.db.execute(
            "SELECT boot, seq, last_hash FROM device_state WHERE device_id=?", (device_id,)
        ).fetchone()
        return None if row is None else DeviceState(row[0], row[1], bytes(row[2]))

    def devices_with_state(self, device_ids: Sequence[str]) -> list[tuple[Device, DeviceState | None]]:
        """The enrolled devices among ``device_ids``, each with its state if it has one (ingest's
        cold cache: one query per few hundred ids instead of two per id)."""
        out: list[tuple[Device, DeviceState | None]] = []
        cols = ", ".join("d." + c for c in _DEVICE_COLS.split(", "))
        for i in range(0, len(device_ids), 500):
            chunk = device_ids[i : i + 500]
            for r in self.db.execute(
                "SELECT %s, s.boot, s.seq, s.last_hash FROM devices d LEFT JOIN device_state s "
                "ON s.device_id = d.device_id WHERE d.device_id IN (%s)" % (cols, ",".join("?" * len(chunk))),
                chunk,
            ):
                out.append((_device(r), None if r[8] is None else DeviceState(r[8], r[9], bytes(r[10]))))
        return out

    def device_stats(self) -> dict[str, tuple[int, int, float]]:
        """device id -> (reports, gaps, last seen)."""
        return {
            r[0]: (r[1], r[2], r[3])
            for r in self.db.execute("SELECT device_id, reports, gaps, last_seen FROM device_state")
        }

    # -- ingest -------------------------------------------------------------
    def seen(self, device_id: str, boot: int, seq: int) -> bytes | None:
        row = self.db.execute(
            "SELECT cose FROM reports WHERE device_id=? AND boot=? AND seq=?", (device_id, boot, seq)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def reports_around(self, device_id: str, seq: int) -> dict[int, bytes]:
        """The device's accepted reports at seq-1, seq and seq+1 (any bootcount): seq -> COSE bytes."""
        return {
            int(r[0]): bytes(r[1])
            for r in self.db.execute(
                "SELECT seq, cose FROM reports WHERE device_id=? AND seq BETWEEN ? AND ?", (device_id, seq - 1, seq + 1)
            )
        }

    def reports_at(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, bool, bytes]]:
        """(device, seq) -> (id, gap, COSE) of the accepted reports among ``keys`` (any bootcount);
        a few queries per group, not one per report."""
        out: dict[tuple[str, int], tuple[int, bool, bytes]] = {}
        keys = list(dict.fromkeys(keys))
        for i in range(0, len(keys), 200):
            chunk = keys[i : i + 200]
            where = " OR ".join(["(device_id=? AND seq=?)"] * len(chunk))
            for r in self.db.execute(
                "SELECT id, device_id, seq, gap, cose FROM reports WHERE %s" % where, [v for key in chunk for v in key]
            ):
                out[(str(r[1]), int(r[2]))] = (int(r[0]), bool(r[3]), bytes(r[4]))
        return out

    def clear_gap(self, report_id: int, device_id: str) -> None:
        """The report's predecessor arrived late and it chains to it: no gap after all (in the caller's tx)."""
        cur = self.db.execute("UPDATE reports SET gap=0 WHERE id=? AND gap=1", (report_id,))
        if cur.rowcount:
            self.db.execute("UPDATE device_state SET gaps=gaps-1 WHERE device_id=? AND gaps > 0", (device_id,))

    _INSERT_REPORT = (
        "INSERT INTO reports(device_id, boot, seq, received_at, cose, gap) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
    )
    _UPSERT_STATE = (
        "INSERT INTO device_state(device_id, boot, seq, last_hash, reports, gaps, last_seen) "
        "VALUES (?, ?, ?, ?, 1, ?, ?) ON CONFLICT(device_id) DO UPDATE SET "
        # Only forward: a late report (gateway/verify.py check_late), or one a
        # second gateway commits after a later one, must not move S back.
        "boot=CASE WHEN excluded.seq > device_state.seq THEN excluded.boot ELSE device_state.boot END, "
        "last_hash=CASE WHEN excluded.seq > device_state.seq THEN excluded.last_hash "
        "ELSE device_state.last_hash END, "
        "seq=CASE WHEN excluded.seq > device_state.seq THEN excluded.seq ELSE device_state.seq END, "
        "reports=device_state.reports+1, gaps=device_state.gaps+excluded.gaps, last_seen=excluded.last_seen"
    )

    def commit_outcomes(self, accepted: Iterable[AcceptedRow], rejected: Iterable[RejectedRow]) -> int:
        """Store a group of verification outcomes in one transaction.

        Returns how many accepted rows were already stored (by another gateway
        of the cluster, or before a crash): the caller counts those as duplicates.

        Performance: one ``executemany`` per statement for the whole group
        instead of two ``execute`` calls per report.  A report row that
        already exists (ON CONFLICT DO NOTHING skipped it) must not touch
        ``device_state``; that cannot be seen from ``executemany``, so when the
        number of inserted rows falls short the group is redone row by row.
        """
        accepted = list(accepted)
        skipped = 0
        with self._tx():
            if self.shared:
                # Report and rejection ids are handed out and committed in the same
                # order across the cluster, so the pipeline's cursors ("every id
                # above the last one seen") never pass a row still uncommitted.
                self.db.execute("SELECT pg_advisory_xact_lock(?)", (OUTCOMES_LOCK,))
            if accepted:
                self.db.execute("SAVEPOINT outcomes")
                cur = self.db.executemany(
                    self._INSERT_REPORT,
                    [(a.device_id, a.boot, a.seq, a.received_at, a.cose, int(a.gap)) for a in accepted],
                )
                if cur.rowcount == len(accepted):
                    self.db.executemany(
                        self._UPSERT_STATE,
                        [(a.device_id, a.boot, a.seq, a.report_hash, int(a.gap), a.received_at) for a in accepted],
                    )
                else:
                    self.db.execute("ROLLBACK TO outcomes")
                    for a in accepted:
                        cur = self.db.execute(
                            self._INSERT_REPORT, (a.device_id, a.boot, a.seq, a.received_at, a.cose, int(a.gap))
                        )
                        if cur.rowcount == 0:
                            skipped += 1
                            continue
                        self.db.execute(
                            self._UPSERT_STATE, (a.device_id, a.boot, a.seq, a.report_hash, int(a.gap), a.received_at)
                        )
                self.db.execute("RELEASE outcomes")
            for r in rejected:
                self.db.execute(
                    "INSERT INTO rejections(at, topic, device_id, reason, detail, payload, "
                    "payload_sha256) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (r.at, r.topic, r.device_id, r.reason, r.detail, r.payload, r.payload_sha256),
                )
                self.db.execute(
                    "INSERT INTO rejection_counts(reason, count) VALUES (?, 1) "
                    "ON CONFLICT(reason) DO UPDATE SET count=rejection_counts.count+1",
                    (r.reason,),
                )
        return skipped

    def prune_rejections(self, keep: int = MAX_REJECTIONS) -> None:
        with self._tx():
            self.db.execute("DELETE FROM rejections WHERE id <= (SELECT MAX(id) FROM rejections) - ?", (keep,))

    def rejection_counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute("SELECT reason, count FROM rejection_counts")}

    def recent_rejections(self, limit: int = 20) -> list[RejectedRow]:
        return [
            RejectedRow(r[0], r[1], r[2], r[3], r[4], None)
            for r in self.db.execute(
                "SELECT at, topic, device_id, reason, detail FROM rejections ORDER BY id DESC LIMIT ?", (limit,)
            )
        ]

    def rejections_after(self, last_id: int, limit: int) -> list[tuple[int, RejectedRow]]:
        """Audit rows with id > ``last_id``, oldest first (the pipeline's `rejected` receipts)."""
        return [
            (r[0], RejectedRow(r[1], r[2], r[3], r[4], r[5], None if r[6] is None else bytes(r[6]), r[7]))
            for r in self.db.execute(
                "SELECT id, at, topic, device_id, reason, detail, payload, payload_sha256 FROM rejections "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (last_id, limit),
            )
        ]

    def max_ids(self) -> tuple[int, int]:
        """Highest report and rejection row ids (where a fresh cursor starts)."""
        row = self.db.execute(
            "SELECT (SELECT COALESCE(MAX(id), 0) FROM reports), (SELECT COALESCE(MAX(id), 0) FROM rejections)"
        ).fetchone()
        return int(row[0]), int(row[1])

    def reports_after(self, last_id: int, limit: int) -> list[tuple[int, str, str, str, int, int, float, int, bytes]]:
        """(id, device id, fleet, board, boot, seq, received_at, gap, COSE bytes) of accepted
        reports with id > ``last_id``, oldest first: rows as SQLite returns them, since
        every report passes through here once (the first `verified` message)."""
        return self.db.execute(
            "SELECT r.id, r.device_id, d.fleet, d.board, r.boot, r.seq, r.received_at, r.gap, r.cose "
            "FROM reports r JOIN devices d ON d.device_id = r.device_id "
            "WHERE r.id > ? ORDER BY r.id LIMIT ?",
            (last_id, limit),
        ).fetchall()

    def report_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM reports").fetchone()[0])

    # -- batching -----------------------------------------------------------
    def unbatched(self, limit: int) -> list[tuple[int, bytes, float]]:
        """(row id, COSE bytes, received_at) of accepted reports not yet in a batch, in order."""
        return [
            (r[0], bytes(r[1]), r[2])
            for r in self.db.execute(
                "SELECT id, cose, received_at FROM reports WHERE batch_seq IS NULL ORDER BY id LIMIT ?", (limit,)
            )
        ]

    def unbatched_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM reports WHERE batch_seq IS NULL").fetchone()[0])

    def oldest_unbatched_at(self) -> float | None:
        row = self.db.execute("SELECT MIN(received_at) FROM reports WHERE batch_seq IS NULL").fetchone()
        return None if row[0] is None else float(row[0])

    def unbatched_received_at(self, n: int) -> float | None:
        """``received_at`` of the n-th (from 1) unbatched report in order, if that many wait."""
        row = self.db.execute(
            "SELECT received_at FROM reports WHERE batch_seq IS NULL ORDER BY id LIMIT 1 OFFSET ?", (n - 1,)
        ).fetchone()
        return None if row is None else float(row[0])

    def leaf_received_at(self, seq: int, leaf_index: int) -> float | None:
        row = self.db.execute(
            "SELECT received_at FROM reports WHERE batch_seq=? AND leaf_index=?", (seq, leaf_index)
        ).fetchone()
        return None if row is None else float(row[0])

    def last_batch(self) -> Batch | None:
        row = self.db.execute("SELECT %s FROM batches ORDER BY seq DESC LIMIT 1" % _BATCH_COLS).fetchone()
        return None if row is None else _batch(row)

    def batch(self, seq: int) -> Batch | None:
        row = self.db.execute("SELECT %s FROM batches WHERE seq=?" % _BATCH_COLS, (seq,)).fetchone()
        return None if row is None else _batch(row)

    def batches(self, state: str | None = None, from_seq: int = 0) -> list[Batch]:
        if state is None:
            rows = self.db.execute("SELECT %s FROM batches WHERE seq >= ? ORDER BY seq" % _BATCH_COLS, (from_seq,))
        else:
            rows = self.db.execute(
                "SELECT %s FROM batches WHERE state=? AND seq >= ? ORDER BY seq" % _BATCH_COLS, (state, from_seq)
            )
        return [_batch(r) for r in rows]

    # The anchorer's per-pass queries stay O(log n) however many batches exist.
    def first_unconfirmed(self) -> Batch | None:
        row = self.db.execute(
            "SELECT %s FROM batches WHERE state IN ('closed', 'anchoring') ORDER BY seq LIMIT 1" % _BATCH_COLS
        ).fetchone()
        return None if row is None else _batch(row)

    def unconfirmed_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM batches WHERE state IN ('closed', 'anchoring')").fetchone()[0])

    def recent_confirmed(self, n: int) -> list[Batch]:
        rows = self.db.execute(
            "SELECT %s FROM batches WHERE state IN ('confirmed', 'receipted') ORDER BY seq DESC LIMIT ?" % _BATCH_COLS,
            (n,),
        ).fetchall()
        return [_batch(r) for r in reversed(rows)]

    def batch_state_counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute("SELECT state, COUNT(*) FROM batches GROUP BY state")}

    def last_confirmed_anchor(self) -> Anchor | None:
        row = self.db.execute(
            "SELECT %s FROM anchors WHERE state='confirmed' ORDER BY batch_seq DESC, id DESC LIMIT 1" % _ANCHOR_COLS
        ).fetchone()
        return None if row is None else _anchor(row)

    def first_confirmed_above(self, seq: int) -> int | None:
        row = self.db.execute(
            "SELECT MIN(seq) FROM batches WHERE state IN ('confirmed', 'receipted') AND seq > ?", (seq,)
        ).fetchone()
        return None if row[0] is None else int(row[0])

    def add_batch(self, batch: Batch, report_ids: Sequence[int]) -> None:
        """Record a closed batch and place its reports at their leaf indices, atomically."""
        with self._tx():
            self.db.execute(
                "INSERT INTO batches(%s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)" % _BATCH_COLS,
                (
                    batch.seq,
                    batch.gateway_id,
                    batch.root,
                    batch.size,
                    batch.first_at,
                    batch.last_at,
                    batch.prev_root,
                    batch.closed_at,
                    batch.state,
                ),
            )
            first, last = (report_ids[0], report_ids[-1]) if report_ids else (0, -1)
            if report_ids and last - first + 1 == len(report_ids):
                # Ids of a batch are consecutive (reports are never deleted): one
                # statement holds the write lock, which ingest waits for, far shorter.
                self.db.execute(
                    "UPDATE reports SET batch_seq=?, leaf_index=id-? WHERE id BETWEEN ? AND ? AND batch_seq IS NULL",
                    (batch.seq, first, first, last),
                )
            else:
                self.db.executemany(
                    "UPDATE reports SET batch_seq=?, leaf_index=? WHERE id=? AND batch_seq IS NULL",
                    ((batch.seq, i, rid) for i, rid in enumerate(report_ids)),
                )

    def batch_leaves(self, seq: int) -> list[StoredReport]:
        return [
            self._report(r)
            for r in self.db.execute(
                "SELECT id, device_id, boot, seq, received_at, cose, batch_seq, leaf_index FROM reports "
                "WHERE batch_seq=? ORDER BY leaf_index",
                (seq,),
            )
        ]

    def batch_devices(self, seq: int) -> dict[str, tuple[str, str]]:
        """device id -> (fleet, board) of every device with a report in batch ``seq``, in one query."""
        return {
            r[0]: (r[1], r[2])
            for r in self.db.execute(
                "SELECT DISTINCT d.device_id, d.fleet, d.board FROM reports r JOIN devices d ON d.device_id = r.device_id "
                "WHERE r.batch_seq=?",
                (seq,),
            )
        }

    def batch_fleet_counts(self, seq: int) -> dict[str, int]:
        """fleet -> number of reports in batch ``seq`` (devices since deleted count as 'unknown')."""
        return {
            r[0]: r[1]
            for r in self.db.execute(
                "SELECT COALESCE(d.fleet, 'unknown'), COUNT(*) FROM reports r LEFT JOIN devices d "
                "ON d.device_id = r.device_id WHERE r.batch_seq=? GROUP BY 1",
                (seq,),
            )
        }

    def report(self, device_id: str, boot: int, seq: int) -> StoredReport | None:
        row = self.db.execute(
            "SELECT id, device_id, boot, seq, received_at, cose, batch_seq, leaf_index FROM reports "
            "WHERE device_id=? AND boot=? AND seq=?",
            (device_id, boot, seq),
        ).fetchone()
        return None if row is None else self._report(row)

    @staticmethod
    def _report(r: Sequence[Any]) -> StoredReport:
        return StoredReport(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6], r[7])

    def mark_receipted(self, seq: int) -> None:
        """confirmed -> receipted; a batch reorged meanwhile keeps its new state."""
        with self._tx():
            self.db.execute("UPDATE batches SET state='receipted' WHERE seq=? AND state='confirmed'", (seq,))

    def set_batch_state(self, seq: int, state: str) -> None:
        with self._tx():
            row = self.db.execute("SELECT state FROM batches WHERE seq=?", (seq,)).fetchone()
            lifecycle.check_batch_move(row[0], state)
            self.db.execute("UPDATE batches SET state=? WHERE seq=?", (state, seq))

    # -- anchoring ----------------------------------------------------------
    def anchors(self, batch_seq: int | None = None) -> list[Anchor]:
        if batch_seq is None:
            rows = self.db.execute("SELECT %s FROM anchors ORDER BY id" % _ANCHOR_COLS)
        else:
            rows = self.db.execute("SELECT %s FROM anchors WHERE batch_seq=? ORDER BY id" % _ANCHOR_COLS, (batch_seq,))
        return [_anchor(r) for r in rows]

    def anchor(self, anchor_id: int) -> Anchor:
        row = self.db.execute("SELECT %s FROM anchors WHERE id=?" % _ANCHOR_COLS, (anchor_id,)).fetchone()
        return _anchor(row)

    def live_anchor(self, batch_seq: int) -> Anchor | None:
        """The attempt that is not dropped, if any (there is at most one)."""
        row = self.db.execute(
            "SELECT %s FROM anchors WHERE batch_seq=? AND state != 'dropped' ORDER BY id DESC LIMIT 1" % _ANCHOR_COLS,
            (batch_seq,),
        ).fetchone()
        return None if row is None else _anchor(row)

    def begin_anchor(self, batch_seq: int, chain_id: int, contract: str, gateway_address: str) -> int:
        """Write the pending record; called *before* the transaction is sent."""
        now = time.time()
        with self._tx():
            row = self.db.execute("SELECT state FROM batches WHERE seq=?", (batch_seq,)).fetchone()
            lifecycle.check_batch_move(row[0], lifecycle.ANCHORING)
            anchor_id = self.insert_id(
                "INSERT INTO anchors(batch_seq, chain_id, contract, gateway_address, state, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, 'submitting', ?, ?)",
                (batch_seq, chain_id, contract, gateway_address, now, now),
            )
            self.db.execute("UPDATE batches SET state='anchoring' WHERE seq=?", (batch_seq,))
            return anchor_id

    def update_anchor(
        self,
        anchor_id: int,
        state: str,
        tx_hash: bytes | None = None,
        block_number: int | None = None,
        block_hash: bytes | None = None,
        gas_used: int | None = None,
        attestation: bytes | None = None,
    ) -> None:
        with self._tx():
            seq, current, batch_current = self.db.execute(
                "SELECT a.batch_seq, a.state, b.state FROM anchors a JOIN batches b ON b.seq = a.batch_seq "
                "WHERE a.id=?",
                (anchor_id,),
            ).fetchone()
            lifecycle.check_anchor_move(current, state)
            batch_state = lifecycle.anchored_state(state)
            lifecycle.check_batch_move(batch_current, batch_state)
            self.db.execute(
                "UPDATE anchors SET state=?, tx_hash=COALESCE(?, tx_hash), block_number=?, block_hash=?, "
                "gas_used=COALESCE(?, gas_used), attestation=?, updated_at=? WHERE id=?",
                (state, tx_hash, block_number, block_hash, gas_used, attestation, time.time(), anchor_id),
            )
            self.db.execute("UPDATE batches SET state=? WHERE seq=?", (batch_state, seq))

    def confirmed_anchor(self, batch_seq: int) -> Anchor | None:
        row = self.db.execute(
            "SELECT %s FROM anchors WHERE batch_seq=? AND state='confirmed' ORDER BY id DESC LIMIT 1" % _ANCHOR_COLS,
            (batch_seq,),
        ).fetchone()
        return None if row is None else _anchor(row)


class _Tx:
    """BEGIN IMMEDIATE (SQLite: take the write lock now) ... COMMIT, rolled back on any exception."""

    def __init__(self, db: Connection, begin: str) -> None:
        self.db = db
        self.begin = begin
        self.nested = False

    def __enter__(self) -> None:
        self.nested = self.db.in_transaction
        if not self.nested:
            self.db.execute(self.begin)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.nested:
            return
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
