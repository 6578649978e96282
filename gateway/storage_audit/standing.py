"""A device's storage standing over its current audit window (docs/protocol.md §10.5).

The window is the last ``window_s`` seconds before ``now`` (default one hour,
the gateway option ``audit_window_s``, which the audit stage records in the
database's meta table so that every reader of the store uses the same one).
A challenge belongs to the window in which it was resolved.

Proven storage is the plot slice the latest passed challenge in the window
covered (the blocks the device had acknowledged when that challenge was
sent, times the block size), and 0 when the window holds no passed challenge
or any challenge that failed or timed out: one wrong or missing answer voids
the window, so a device cannot average a failure away with passes.
"""

from __future__ import annotations

from typing import Sequence

from gateway.storage_audit.core import FAILED, PASSED, TIMED_OUT
from gateway.store import Store

DEFAULT_WINDOW_S = 3600.0
WINDOW_META = "audit_window_s"


def window_s(store: Store) -> float:
    """The audit window length this database's gateway uses."""
    raw = store.meta(WINDOW_META)
    try:
        return float(raw) if raw else DEFAULT_WINDOW_S
    except ValueError:
        return DEFAULT_WINDOW_S


def storage_standing(store: Store, device_id: str, now: float) -> tuple[int, int, int, int]:
    """(proven_storage_bytes, challenges_passed, challenges_failed, challenges_timed_out)
    of ``device_id`` over the window (now - window_s, now]; all 0 for a device
    never challenged.  Used by the attestation (gateway/attest.py) and the rewards."""
    start = now - window_s(store)
    counts = {PASSED: 0, FAILED: 0, TIMED_OUT: 0}
    for outcome, n in store.db.execute(
        "SELECT outcome, COUNT(*) FROM audit_challenges WHERE device_id=? AND resolved_at>? "
        "AND resolved_at<=? AND outcome IS NOT NULL GROUP BY outcome",
        (device_id, start, now),
    ):
        if outcome in counts:
            counts[outcome] = int(n)
    proven = 0
    if counts[PASSED] and not counts[FAILED] and not counts[TIMED_OUT]:
        row = store.db.execute(
            "SELECT blocks * block_size FROM audit_challenges WHERE device_id=? AND outcome=? "
            "AND resolved_at>? AND resolved_at<=? ORDER BY resolved_at DESC LIMIT 1",
            (device_id, PASSED, start, now),
        ).fetchone()
        proven = int(row[0]) if row else 0
    return proven, counts[PASSED], counts[FAILED], counts[TIMED_OUT]


def storage_standings(store: Store, device_ids: Sequence[str], now: float) -> dict[str, tuple[int, int, int, int]]:
    """:func:`storage_standing` of each of ``device_ids`` that has one; a device left out stands at all 0.

    One query finds which of them had a challenge resolved in the window
    (the attestation stage asks for hundreds of devices at a time, most of
    them with none), and only those are looked up.
    """
    wanted = sorted(set(device_ids))
    start = now - window_s(store)
    out: dict[str, tuple[int, int, int, int]] = {}
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        rows = store.db.execute(
            "SELECT DISTINCT device_id FROM audit_challenges WHERE device_id IN (%s) AND resolved_at>? "
            "AND resolved_at<=? AND outcome IS NOT NULL" % ",".join("?" * len(chunk)),
            (*chunk, start, now),
        )
        for (device_id,) in rows.fetchall():
            out[device_id] = storage_standing(store, device_id, now)
    return out
