"""The gateway database behind gateway/store.py: SQLite (embedded default) or PostgreSQL.

One Store, one set of SQL statements.  What differs between the engines is
kept to a small seam: how a connection is opened and migrated
(gateway/db/sqlite.py, gateway/db/postgres.py), the placeholder style
(translated by the PostgreSQL connection), the statement that opens a write
transaction, and how an insert reports its new row id.  Everything else is
SQL both engines accept (INSERT ... ON CONFLICT, COALESCE, partial indexes).
"""

from __future__ import annotations

import sqlite3
from typing import Any, Iterable, Iterator, Protocol

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class StoreError(Exception):
    """The database cannot be opened or is from an unknown schema version."""


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What the store and its call sites use of a DB-API connection (sqlite3's names)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor: ...

    @property
    def in_transaction(self) -> bool: ...

    def close(self) -> None: ...


def is_postgres(target: str) -> bool:
    return str(target).startswith(POSTGRES_SCHEMES)


def _error_types() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    errors: list[type[Exception]] = [sqlite3.Error]
    integrity: list[type[Exception]] = [sqlite3.IntegrityError]
    try:
        import psycopg
    except ImportError:  # psycopg is only needed for postgresql:// databases
        pass
    else:
        errors.append(psycopg.Error)
        integrity.append(psycopg.IntegrityError)
    return tuple(errors), tuple(integrity)


# `except DB_ERRORS` catches a failed statement on either engine (a full disk, a
# dropped PostgreSQL connection); INTEGRITY_ERRORS a violated constraint.
DB_ERRORS, INTEGRITY_ERRORS = _error_types()


def connect(target: str) -> Connection:
    """Open and migrate the database: a SQLite file path or a postgresql:// URL."""
    if is_postgres(target):
        from gateway.db.postgres import connect as pg_connect

        return pg_connect(target)
    from gateway.db.sqlite import connect as sqlite_connect

    return sqlite_connect(target)
