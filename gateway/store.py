"""Durable state of the gateway: SQLite in WAL mode with versioned migrations.

One file holds everything a restarted gateway needs: the device registry, the
exact COSE bytes of every accepted report, a bounded audit trail of
rejections, batches with their Merkle roots, and anchoring attempts.  Every
stage hands off to the next through these tables, so a crash at any point
resumes from what was committed.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from gateway import lifecycle

SCHEMA_VERSION = 7

# Each entry moves the schema from version i to i + 1.  Never edit a shipped
# migration: append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE devices (
        device_id   TEXT PRIMARY KEY,
        pubkey      BLOB NOT NULL UNIQUE,
        board       TEXT NOT NULL,
        fleet       TEXT NOT NULL,
        owner       TEXT NOT NULL DEFAULT '',
        enrolled_at REAL NOT NULL,
        revoked_at  REAL,
        next_pubkey BLOB
    );
    CREATE TABLE device_state (
        device_id  TEXT PRIMARY KEY REFERENCES devices(device_id),
        boot       INTEGER NOT NULL,
        seq        INTEGER NOT NULL,
        last_hash  BLOB NOT NULL,
        reports    INTEGER NOT NULL DEFAULT 0,
        gaps       INTEGER NOT NULL DEFAULT 0,
        last_seen  REAL NOT NULL
    );
    CREATE TABLE reports (
        id          INTEGER PRIMARY KEY,
        device_id   TEXT NOT NULL,
        boot        INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        received_at REAL NOT NULL,
        cose        BLOB NOT NULL,
        gap         INTEGER NOT NULL DEFAULT 0,
        batch_seq   INTEGER,
        leaf_index  INTEGER,
        UNIQUE (device_id, boot, seq)
    );
    CREATE INDEX reports_unbatched ON reports(id) WHERE batch_seq IS NULL;
    CREATE INDEX reports_batch ON reports(batch_seq, leaf_index);
    CREATE TABLE rejections (
        id          INTEGER PRIMARY KEY,
        at          REAL NOT NULL,
        topic       TEXT NOT NULL,
        device_id   TEXT,
        reason      TEXT NOT NULL,
        detail      TEXT NOT NULL,
        payload     BLOB
    );
    CREATE TABLE rejection_counts (
        reason TEXT PRIMARY KEY,
        count  INTEGER NOT NULL
    );
    CREATE TABLE batches (
        seq         INTEGER PRIMARY KEY,
        gateway_id  TEXT NOT NULL,
        root        BLOB NOT NULL,
        size        INTEGER NOT NULL,
        first_at    REAL NOT NULL,
        last_at     REAL NOT NULL,
        prev_root   BLOB NOT NULL,
        closed_at   REAL NOT NULL,
        state       TEXT NOT NULL DEFAULT 'closed'
    );
    CREATE TABLE anchors (
        id           INTEGER PRIMARY KEY,
        batch_seq    INTEGER NOT NULL REFERENCES batches(seq),
        chain_id     INTEGER NOT NULL,
        contract     TEXT NOT NULL,
        gateway_address TEXT NOT NULL,
        state        TEXT NOT NULL,
        tx_hash      BLOB,
        block_number INTEGER,
        block_hash   BLOB,
        gas_used     INTEGER,
        attestation  BLOB,
        created_at   REAL NOT NULL,
        updated_at   REAL NOT NULL
    );
    CREATE INDEX anchors_batch ON anchors(batch_seq);
    CREATE INDEX batches_state ON batches(state, seq);
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: retired device keys (key rotation, gateway/rotation.py), so bundles of
    # older reports still name the key that signed them.
    """
    CREATE TABLE device_keys (
        device_id  TEXT NOT NULL,
        pubkey     BLOB NOT NULL UNIQUE,
        retired_at REAL NOT NULL,
        batch_seq  INTEGER NOT NULL
    );
    CREATE INDEX device_keys_device ON device_keys(device_id);
    """,
    # 3: the ingest process and the pipeline are separate processes
    # (gateway/ingest_process.py): the pipeline sends `rejected` receipts from
    # this table, so it keeps the digest of the whole message.
    """
    ALTER TABLE rejections ADD COLUMN payload_sha256 TEXT;
    """,
    # 4: what the gateway itself verified about a report (docs/protocol.md,
    # attested): measured upload rate, proven storage, challenge counts, flags,
    # and the gateway's signature over the canonical JSON body.
    """
    CREATE TABLE attestations (
        report_id           INTEGER PRIMARY KEY REFERENCES reports(id),
        device_id           TEXT NOT NULL,
        boot                INTEGER NOT NULL,
        seq                 INTEGER NOT NULL,
        bw_up               INTEGER,
        storage_bytes       INTEGER NOT NULL DEFAULT 0,
        challenges_passed   INTEGER NOT NULL DEFAULT 0,
        challenges_failed   INTEGER NOT NULL DEFAULT 0,
        challenges_timed_out INTEGER NOT NULL DEFAULT 0,
        flags               TEXT NOT NULL DEFAULT '',
        body                TEXT NOT NULL,
        signature           BLOB NOT NULL,
        at                  REAL NOT NULL
    );
    CREATE INDEX attestations_device ON attestations(device_id, boot, seq);
    """,
    # 5: bandwidth probe runs the ingest process checked (gateway/probe_check.py),
    # one row per report whose seq had a run, written with the report; and the
    # probe outcome counts per fleet (runs by outcome, dropped chunks by reason).
    """
    CREATE TABLE probe_runs (
        device_id   TEXT NOT NULL,
        boot        INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        outcome     TEXT NOT NULL,
        bw_up       INTEGER,
        bytes       INTEGER NOT NULL,
        chunks      INTEGER NOT NULL,
        elapsed_us  INTEGER NOT NULL,
        at          REAL NOT NULL,
        PRIMARY KEY (device_id, boot, seq)
    );
    CREATE TABLE probe_counts (
        fleet   TEXT NOT NULL,
        kind    TEXT NOT NULL,
        outcome TEXT NOT NULL,
        count   INTEGER NOT NULL,
        PRIMARY KEY (fleet, kind, outcome)
    );
    """,
    # 6: storage audit (gateway/storage_audit/, docs/protocol.md §10): one plot
    # per device (its secret seed and how many blocks the device acknowledged),
    # every challenge with its outcome, and outcome counts per fleet.
    """
    CREATE TABLE audit_plots (
        device_id   TEXT PRIMARY KEY REFERENCES devices(device_id),
        plot        INTEGER NOT NULL,
        seed        BLOB NOT NULL,
        block_size  INTEGER NOT NULL,
        blocks      INTEGER NOT NULL,
        stored      INTEGER NOT NULL DEFAULT 0,
        sent_at     REAL,
        resends     INTEGER NOT NULL DEFAULT 0,
        created_at  REAL NOT NULL
    );
    CREATE TABLE audit_challenges (
        id          INTEGER PRIMARY KEY,
        device_id   TEXT NOT NULL,
        plot        INTEGER NOT NULL,
        nonce       BLOB NOT NULL UNIQUE,
        indices     TEXT NOT NULL,
        blocks      INTEGER NOT NULL,
        block_size  INTEGER NOT NULL,
        sent_at     REAL NOT NULL,
        deadline    REAL NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 1,
        outcome     TEXT,
        resolved_at REAL
    );
    CREATE INDEX audit_challenges_device ON audit_challenges(device_id, resolved_at);
    CREATE INDEX audit_challenges_open ON audit_challenges(deadline) WHERE outcome IS NULL;
    CREATE TABLE audit_counts (
        fleet   TEXT NOT NULL,
        outcome TEXT NOT NULL,
        count   INTEGER NOT NULL,
        PRIMARY KEY (fleet, outcome)
    );
    """,
    # 7: reward epochs (gateway/rewards/): each closed epoch's signed file,
    # its anchoring attempts on SurgeRewards, and every owner's cumulative
    # amount after the latest epoch (the statement's quick path).
    """
    CREATE TABLE reward_epochs (
        epoch       INTEGER PRIMARY KEY,
        start_ms    INTEGER NOT NULL,
        end_ms      INTEGER NOT NULL,
        last_batch  INTEGER NOT NULL,
        root        BLOB NOT NULL,
        leaves      INTEGER NOT NULL,
        total       TEXT NOT NULL,
        file        BLOB NOT NULL,
        state       TEXT NOT NULL DEFAULT 'closed',
        closed_at   REAL NOT NULL
    );
    CREATE TABLE reward_anchors (
        id           INTEGER PRIMARY KEY,
        epoch        INTEGER NOT NULL REFERENCES reward_epochs(epoch),
        chain_id     INTEGER NOT NULL,
        contract     TEXT NOT NULL,
        gateway_address TEXT NOT NULL,
        state        TEXT NOT NULL,
        tx_hash      BLOB,
        block_number INTEGER,
        block_hash   BLOB,
        attestation  BLOB,
        created_at   REAL NOT NULL,
        updated_at   REAL NOT NULL
    );
    CREATE INDEX reward_anchors_epoch ON reward_anchors(epoch);
    CREATE TABLE reward_cumulative (
        owner       TEXT PRIMARY KEY,
        cumulative  TEXT NOT NULL,
        epoch       INTEGER NOT NULL
    );
    """,
)

# Audit rows kept per rejection table; counts are kept forever.
MAX_REJECTIONS = 10_000


class StoreError(Exception):
    """The database cannot be opened or is from an unknown schema version."""


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
            "gateway_id": self.gateway_id, "batch_seq": self.seq, "root": self.root.hex(),
            "size": self.size, "first_at": round(self.first_at * 1000), "last_at": round(self.last_at * 1000),
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


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating if needed) and migrate the gateway database."""
    try:
        db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the broker sees the acknowledgement.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        from gateway.faults import db_page_limit
        pages = db_page_limit()  # fault injection only (SURGE_DB_MAX_PAGES): a "disk" that is full
        if pages:
            db.execute("PRAGMA max_page_count=%d" % pages)
        version = db.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise StoreError("cannot open gateway database %s: %s" % (path, exc)) from None
    if version > SCHEMA_VERSION:
        raise StoreError("database %s has schema version %d, newer than this gateway (%d); "
                         "upgrade Surge" % (path, version, SCHEMA_VERSION))
    for target in range(version, SCHEMA_VERSION):
        try:
            db.execute("BEGIN IMMEDIATE")
            for statement in MIGRATIONS[target].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("PRAGMA user_version=%d" % (target + 1))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            db.execute("ROLLBACK")
            raise StoreError("migrating %s to schema %d failed: %s" % (path, target + 1, exc)) from None
    return db


def _device(row: Sequence[Any]) -> Device:
    return Device(row[0], bytes(row[1]), row[2], row[3], row[4], row[5], row[6],
                  bytes(row[7]) if row[7] is not None else None)


_DEVICE_COLS = "device_id, pubkey, board, fleet, owner, enrolled_at, revoked_at, next_pubkey"
_ANCHOR_COLS = ("id, batch_seq, chain_id, contract, gateway_address, state, tx_hash, block_number, "
                "block_hash, gas_used, attestation, created_at, updated_at")
_BATCH_COLS = "seq, gateway_id, root, size, first_at, last_at, prev_root, closed_at, state"


def _anchor(row: Sequence[Any]) -> Anchor:
    return Anchor(row[0], row[1], row[2], row[3], row[4], row[5],
                  bytes(row[6]) if row[6] is not None else None, row[7],
                  bytes(row[8]) if row[8] is not None else None, row[9],
                  bytes(row[10]) if row[10] is not None else None, row[11], row[12])


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
        self.db = connect(path)

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> "_Tx":
        return _Tx(self.db)

    # -- meta ---------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._tx():
            self.db.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                            "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    # -- registry -----------------------------------------------------------
    def bump_registry(self) -> None:
        """Inside a transaction that changes devices: the ingest process drops its cache."""
        self.db.execute("INSERT INTO meta(key, value) VALUES ('registry_version', '1') "
                        "ON CONFLICT(key) DO UPDATE SET value=CAST(value AS INTEGER) + 1")

    def enroll(self, device_id: str, pubkey: bytes, board: str, fleet: str, owner: str) -> Device:
        with self._tx():
            row = self.db.execute("SELECT %s FROM devices WHERE device_id=? OR pubkey=?" % _DEVICE_COLS,
                                  (device_id, pubkey)).fetchone()
            if row is not None:
                existing = _device(row)
                if existing.pubkey == pubkey and existing.device_id == device_id and existing.active:
                    return existing  # enrolling twice is harmless
                if existing.pubkey == pubkey and not existing.active:
                    raise StoreError("device %s was revoked; a revoked key cannot be enrolled again "
                                     "(generate a new key)" % device_id)
                raise StoreError("device id %s is already enrolled with a different key" % device_id)
            self.db.execute("INSERT INTO devices(device_id, pubkey, board, fleet, owner, enrolled_at) "
                            "VALUES (?, ?, ?, ?, ?, ?)", (device_id, pubkey, board, fleet, owner, time.time()))
            self.bump_registry()
        dev = self.device(device_id)
        assert dev is not None
        return dev

    def revoke(self, device_id: str) -> Device:
        with self._tx():
            cur = self.db.execute("UPDATE devices SET revoked_at=? WHERE device_id=? AND revoked_at IS NULL",
                                  (time.time(), device_id))
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
        row = self.db.execute("SELECT boot, seq, last_hash FROM device_state WHERE device_id=?",
                              (device_id,)).fetchone()
        return None if row is None else DeviceState(row[0], row[1], bytes(row[2]))

    def devices_with_state(self, device_ids: Sequence[str]) -> list[tuple[Device, DeviceState | None]]:
        """The enrolled devices among ``device_ids``, each with its state if it has one (ingest's
        cold cache: one query per few hundred ids instead of two per id)."""
        out: list[tuple[Device, DeviceState | None]] = []
        cols = ", ".join("d." + c for c in _DEVICE_COLS.split(", "))
        for i in range(0, len(device_ids), 500):
            chunk = device_ids[i:i + 500]
            for r in self.db.execute(
                    "SELECT %s, s.boot, s.seq, s.last_hash FROM devices d LEFT JOIN device_state s "
                    "ON s.device_id = d.device_id WHERE d.device_id IN (%s)" % (cols, ",".join("?" * len(chunk))),
                    chunk):
                out.append((_device(r), None if r[8] is None else DeviceState(r[8], r[9], bytes(r[10]))))
        return out

    def device_stats(self) -> dict[str, tuple[int, int, float]]:
        """device id -> (reports, gaps, last seen)."""
        return {r[0]: (r[1], r[2], r[3]) for r in
                self.db.execute("SELECT device_id, reports, gaps, last_seen FROM device_state")}

    # -- ingest -------------------------------------------------------------
    def seen(self, device_id: str, boot: int, seq: int) -> bytes | None:
        row = self.db.execute("SELECT cose FROM reports WHERE device_id=? AND boot=? AND seq=?",
                              (device_id, boot, seq)).fetchone()
        return None if row is None else bytes(row[0])

    _INSERT_REPORT = ("INSERT OR IGNORE INTO reports(device_id, boot, seq, received_at, cose, gap) "
                      "VALUES (?, ?, ?, ?, ?, ?)")
    _UPSERT_STATE = ("INSERT INTO device_state(device_id, boot, seq, last_hash, reports, gaps, last_seen) "
                     "VALUES (?, ?, ?, ?, 1, ?, ?) ON CONFLICT(device_id) DO UPDATE SET "
                     "boot=excluded.boot, seq=excluded.seq, last_hash=excluded.last_hash, "
                     "reports=reports+1, gaps=gaps+excluded.gaps, last_seen=excluded.last_seen")

    def commit_outcomes(self, accepted: Iterable[AcceptedRow], rejected: Iterable[RejectedRow]) -> None:
        """Store a group of verification outcomes in one transaction.

        Performance: one ``executemany`` per statement for the whole group
        instead of two ``execute`` calls per report.  A report row that
        already exists (INSERT OR IGNORE skipped it) must not touch
        ``device_state``; that cannot be seen from ``executemany``, so when the
        number of inserted rows falls short the group is redone row by row.
        """
        accepted = list(accepted)
        with self._tx():
            if accepted:
                self.db.execute("SAVEPOINT outcomes")
                before = self.db.total_changes
                self.db.executemany(self._INSERT_REPORT, [(a.device_id, a.boot, a.seq, a.received_at, a.cose,
                                                           int(a.gap)) for a in accepted])
                if self.db.total_changes - before == len(accepted):
                    self.db.executemany(self._UPSERT_STATE, [(a.device_id, a.boot, a.seq, a.report_hash,
                                                              int(a.gap), a.received_at) for a in accepted])
                else:
                    self.db.execute("ROLLBACK TO outcomes")
                    for a in accepted:
                        cur = self.db.execute(self._INSERT_REPORT, (a.device_id, a.boot, a.seq, a.received_at,
                                                                    a.cose, int(a.gap)))
                        if cur.rowcount == 0:
                            continue
                        self.db.execute(self._UPSERT_STATE, (a.device_id, a.boot, a.seq, a.report_hash,
                                                             int(a.gap), a.received_at))
                self.db.execute("RELEASE outcomes")
            for r in rejected:
                self.db.execute("INSERT INTO rejections(at, topic, device_id, reason, detail, payload, "
                                "payload_sha256) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (r.at, r.topic, r.device_id, r.reason, r.detail, r.payload, r.payload_sha256))
                self.db.execute("INSERT INTO rejection_counts(reason, count) VALUES (?, 1) "
                                "ON CONFLICT(reason) DO UPDATE SET count=count+1", (r.reason,))

    def prune_rejections(self, keep: int = MAX_REJECTIONS) -> None:
        with self._tx():
            self.db.execute("DELETE FROM rejections WHERE id <= (SELECT MAX(id) FROM rejections) - ?", (keep,))

    def rejection_counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute("SELECT reason, count FROM rejection_counts")}

    def recent_rejections(self, limit: int = 20) -> list[RejectedRow]:
        return [RejectedRow(r[0], r[1], r[2], r[3], r[4], None) for r in self.db.execute(
            "SELECT at, topic, device_id, reason, detail FROM rejections ORDER BY id DESC LIMIT ?", (limit,))]

    def rejections_after(self, last_id: int, limit: int) -> list[tuple[int, RejectedRow]]:
        """Audit rows with id > ``last_id``, oldest first (the pipeline's `rejected` receipts)."""
        return [(r[0], RejectedRow(r[1], r[2], r[3], r[4], r[5], None if r[6] is None else bytes(r[6]), r[7]))
                for r in self.db.execute(
                    "SELECT id, at, topic, device_id, reason, detail, payload, payload_sha256 FROM rejections "
                    "WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit))]

    def max_ids(self) -> tuple[int, int]:
        """Highest report and rejection row ids (where a fresh cursor starts)."""
        row = self.db.execute("SELECT (SELECT IFNULL(MAX(id), 0) FROM reports), "
                              "(SELECT IFNULL(MAX(id), 0) FROM rejections)").fetchone()
        return int(row[0]), int(row[1])

    def reports_after(self, last_id: int, limit: int) -> list[tuple[int, str, str, str, int, int, float, int, bytes]]:
        """(id, device id, fleet, board, boot, seq, received_at, gap, COSE bytes) of accepted
        reports with id > ``last_id``, oldest first: rows as SQLite returns them, since
        every report passes through here once (the first `verified` message)."""
        return self.db.execute(
            "SELECT r.id, r.device_id, d.fleet, d.board, r.boot, r.seq, r.received_at, r.gap, r.cose "
            "FROM reports r JOIN devices d ON d.device_id = r.device_id "
            "WHERE r.id > ? ORDER BY r.id LIMIT ?", (last_id, limit)).fetchall()

    def report_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM reports").fetchone()[0])

    # -- batching -----------------------------------------------------------
    def unbatched(self, limit: int) -> list[tuple[int, bytes, float]]:
        """(row id, COSE bytes, received_at) of accepted reports not yet in a batch, in order."""
        return [(r[0], bytes(r[1]), r[2]) for r in self.db.execute(
            "SELECT id, cose, received_at FROM reports WHERE batch_seq IS NULL ORDER BY id LIMIT ?", (limit,))]

    def unbatched_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM reports WHERE batch_seq IS NULL").fetchone()[0])

    def oldest_unbatched_at(self) -> float | None:
        row = self.db.execute("SELECT MIN(received_at) FROM reports WHERE batch_seq IS NULL").fetchone()
        return None if row[0] is None else float(row[0])

    def unbatched_received_at(self, n: int) -> float | None:
        """``received_at`` of the n-th (from 1) unbatched report in order, if that many wait."""
        row = self.db.execute("SELECT received_at FROM reports WHERE batch_seq IS NULL ORDER BY id LIMIT 1 "
                              "OFFSET ?", (n - 1,)).fetchone()
        return None if row is None else float(row[0])

    def leaf_received_at(self, seq: int, leaf_index: int) -> float | None:
        row = self.db.execute("SELECT received_at FROM reports WHERE batch_seq=? AND leaf_index=?",
                              (seq, leaf_index)).fetchone()
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
            rows = self.db.execute("SELECT %s FROM batches WHERE state=? AND seq >= ? ORDER BY seq" % _BATCH_COLS,
                                   (state, from_seq))
        return [_batch(r) for r in rows]

    # The anchorer's per-pass queries stay O(log n) however many batches exist.
    def first_unconfirmed(self) -> Batch | None:
        row = self.db.execute("SELECT %s FROM batches WHERE state IN ('closed', 'anchoring') ORDER BY seq LIMIT 1"
                              % _BATCH_COLS).fetchone()
        return None if row is None else _batch(row)

    def unconfirmed_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM batches WHERE state IN ('closed', 'anchoring')").fetchone()[0])

    def recent_confirmed(self, n: int) -> list[Batch]:
        rows = self.db.execute("SELECT %s FROM batches WHERE state IN ('confirmed', 'receipted') "
                               "ORDER BY seq DESC LIMIT ?" % _BATCH_COLS, (n,)).fetchall()
        return [_batch(r) for r in reversed(rows)]

    def batch_state_counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute("SELECT state, COUNT(*) FROM batches GROUP BY state")}

    def last_confirmed_anchor(self) -> Anchor | None:
        row = self.db.execute("SELECT %s FROM anchors WHERE state='confirmed' ORDER BY batch_seq DESC, id DESC "
                              "LIMIT 1" % _ANCHOR_COLS).fetchone()
        return None if row is None else _anchor(row)

    def first_confirmed_above(self, seq: int) -> int | None:
        row = self.db.execute("SELECT MIN(seq) FROM batches WHERE state IN ('confirmed', 'receipted') AND seq > ?",
                              (seq,)).fetchone()
        return None if row[0] is None else int(row[0])

    def add_batch(self, batch: Batch, report_ids: Sequence[int]) -> None:
        """Record a closed batch and place its reports at their leaf indices, atomically."""
        with self._tx():
            self.db.execute("INSERT INTO batches(%s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)" % _BATCH_COLS,
                            (batch.seq, batch.gateway_id, batch.root, batch.size, batch.first_at,
                             batch.last_at, batch.prev_root, batch.closed_at, batch.state))
            first, last = (report_ids[0], report_ids[-1]) if report_ids else (0, -1)
            if report_ids and last - first + 1 == len(report_ids):
                # Ids of a batch are consecutive (reports are never deleted): one
                # statement holds the write lock, which ingest waits for, far shorter.
                self.db.execute("UPDATE reports SET batch_seq=?, leaf_index=id-? WHERE id BETWEEN ? AND ? "
                                "AND batch_seq IS NULL", (batch.seq, first, first, last))
            else:
                self.db.executemany("UPDATE reports SET batch_seq=?, leaf_index=? WHERE id=? AND batch_seq IS NULL",
                                    ((batch.seq, i, rid) for i, rid in enumerate(report_ids)))

    def batch_leaves(self, seq: int) -> list[StoredReport]:
        return [self._report(r) for r in self.db.execute(
            "SELECT id, device_id, boot, seq, received_at, cose, batch_seq, leaf_index FROM reports "
            "WHERE batch_seq=? ORDER BY leaf_index", (seq,))]

    def batch_devices(self, seq: int) -> dict[str, tuple[str, str]]:
        """device id -> (fleet, board) of every device with a report in batch ``seq``, in one query."""
        return {r[0]: (r[1], r[2]) for r in self.db.execute(
            "SELECT DISTINCT d.device_id, d.fleet, d.board FROM reports r JOIN devices d ON d.device_id = r.device_id "
            "WHERE r.batch_seq=?", (seq,))}

    def batch_fleet_counts(self, seq: int) -> dict[str, int]:
        """fleet -> number of reports in batch ``seq`` (devices since deleted count as 'unknown')."""
        return {r[0]: r[1] for r in self.db.execute(
            "SELECT IFNULL(d.fleet, 'unknown'), COUNT(*) FROM reports r LEFT JOIN devices d "
            "ON d.device_id = r.device_id WHERE r.batch_seq=? GROUP BY 1", (seq,))}

    def report(self, device_id: str, boot: int, seq: int) -> StoredReport | None:
        row = self.db.execute(
            "SELECT id, device_id, boot, seq, received_at, cose, batch_seq, leaf_index FROM reports "
            "WHERE device_id=? AND boot=? AND seq=?", (device_id, boot, seq)).fetchone()
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
            rows = self.db.execute("SELECT %s FROM anchors WHERE batch_seq=? ORDER BY id" % _ANCHOR_COLS,
                                   (batch_seq,))
        return [_anchor(r) for r in rows]

    def anchor(self, anchor_id: int) -> Anchor:
        row = self.db.execute("SELECT %s FROM anchors WHERE id=?" % _ANCHOR_COLS, (anchor_id,)).fetchone()
        return _anchor(row)

    def live_anchor(self, batch_seq: int) -> Anchor | None:
        """The attempt that is not dropped, if any (there is at most one)."""
        row = self.db.execute("SELECT %s FROM anchors WHERE batch_seq=? AND state != 'dropped' "
                              "ORDER BY id DESC LIMIT 1" % _ANCHOR_COLS, (batch_seq,)).fetchone()
        return None if row is None else _anchor(row)

    def begin_anchor(self, batch_seq: int, chain_id: int, contract: str, gateway_address: str) -> int:
        """Write the pending record; called *before* the transaction is sent."""
        now = time.time()
        with self._tx():
            row = self.db.execute("SELECT state FROM batches WHERE seq=?", (batch_seq,)).fetchone()
            lifecycle.check_batch_move(row[0], lifecycle.ANCHORING)
            cur = self.db.execute(
                "INSERT INTO anchors(batch_seq, chain_id, contract, gateway_address, state, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, 'submitting', ?, ?)", (batch_seq, chain_id, contract, gateway_address, now, now))
            self.db.execute("UPDATE batches SET state='anchoring' WHERE seq=?", (batch_seq,))
            return int(cur.lastrowid or 0)

    def update_anchor(self, anchor_id: int, state: str, tx_hash: bytes | None = None,
                      block_number: int | None = None, block_hash: bytes | None = None,
                      gas_used: int | None = None, attestation: bytes | None = None) -> None:
        with self._tx():
            seq, current, batch_current = self.db.execute(
                "SELECT a.batch_seq, a.state, b.state FROM anchors a JOIN batches b ON b.seq = a.batch_seq "
                "WHERE a.id=?", (anchor_id,)).fetchone()
            lifecycle.check_anchor_move(current, state)
            batch_state = lifecycle.anchored_state(state)
            lifecycle.check_batch_move(batch_current, batch_state)
            self.db.execute(
                "UPDATE anchors SET state=?, tx_hash=COALESCE(?, tx_hash), block_number=?, block_hash=?, "
                "gas_used=COALESCE(?, gas_used), attestation=?, updated_at=? WHERE id=?",
                (state, tx_hash, block_number, block_hash, gas_used, attestation, time.time(), anchor_id))
            self.db.execute("UPDATE batches SET state=? WHERE seq=?", (batch_state, seq))

    def confirmed_anchor(self, batch_seq: int) -> Anchor | None:
        row = self.db.execute("SELECT %s FROM anchors WHERE batch_seq=? AND state='confirmed' "
                              "ORDER BY id DESC LIMIT 1" % _ANCHOR_COLS, (batch_seq,)).fetchone()
        return None if row is None else _anchor(row)


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.nested = False

    def __enter__(self) -> None:
        self.nested = self.db.in_transaction
        if not self.nested:
            self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.nested:
            return
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
