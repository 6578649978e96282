"""Crash points for fault-injection tests.

Set ``SURGE_CRASH_AT=<point>`` (or ``<point>:<n>`` for the n-th time the
point is reached) and the gateway kills itself with SIGKILL right there, the
way a power cut would.  Unset in production: then each point is one dict
lookup.  Points: ``ingest-committed`` (after the store commit, before the
PUBACKs), ``batch-closed`` (after a batch is recorded, before it is sent),
``anchor-submitted`` (after the transaction is sent, before its hash is
recorded), ``anchor-recorded`` (hash recorded, before confirmation).
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get("SURGE_CRASH_AT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= int(nth or 1):
        parent = os.environ.get("SURGE_GATEWAY_PARENT")
        if parent:  # the ingest process (gateway/ingest_process.py): the whole gateway goes down
            os.kill(int(parent), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


def db_page_limit() -> int | None:
    """``SURGE_DB_MAX_PAGES=<n>``: every database connection is capped at n pages
    (SQLite ``max_page_count``), so writes fail with SQLITE_FULL as on a full disk.
    The disk-full fault test uses it where it cannot mount a small filesystem
    (not root). Unset in production."""
    spec = os.environ.get("SURGE_DB_MAX_PAGES")
    return int(spec) if spec else None
