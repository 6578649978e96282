"""The gateway's schema: one list of migrations for both engines.

The statements are written in SQLite's dialect, the embedded default; on
PostgreSQL gateway/db/postgres.py translates the few type names that differ
(BLOB, REAL, INTEGER widths, the autoincrement id) when it applies them, so
both engines always hold the same tables at the same version.
"""

from __future__ import annotations

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
