"""SQLite, the embedded default: one file in WAL mode, migrations tracked in user_version."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.db import StoreError
from gateway.db.schema import MIGRATIONS, SCHEMA_VERSION


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
        raise StoreError(
            "database %s has schema version %d, newer than this gateway (%d); "
            "upgrade Surge" % (path, version, SCHEMA_VERSION)
        )
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
