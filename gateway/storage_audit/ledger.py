"""The storage audit's durable state: plots, challenges, counts (tables of migration 6).

SQL only, on a :class:`gateway.store.Store`'s connection; every method that
writes is one transaction, so the audit stage can be killed at any point
and resume from what is here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

from gateway.store import Store


@dataclass(frozen=True)
class Plot:
    device_id: str
    plot: int
    seed: bytes
    block_size: int
    blocks: int
    stored: int
    sent_at: float | None
    resends: int
    created_at: float


@dataclass(frozen=True)
class Challenge:
    id: int
    device_id: str
    plot: int
    nonce: bytes
    indices: tuple[int, ...]
    blocks: int
    block_size: int
    sent_at: float
    deadline: float
    attempts: int
    outcome: str | None
    resolved_at: float | None


_PLOT_COLS = "device_id, plot, seed, block_size, blocks, stored, sent_at, resends, created_at"
_CH_COLS = "id, device_id, plot, nonce, indices, blocks, block_size, sent_at, deadline, attempts, outcome, resolved_at"


def _plot(r: Any) -> Plot:
    return Plot(
        str(r[0]),
        int(r[1]),
        bytes(r[2]),
        int(r[3]),
        int(r[4]),
        int(r[5]),
        None if r[6] is None else float(r[6]),
        int(r[7]),
        float(r[8]),
    )


def _challenge(r: Any) -> Challenge:
    idx = tuple(int(i) for i in json.loads(str(r[4])))
    return Challenge(
        int(r[0]),
        str(r[1]),
        int(r[2]),
        bytes(r[3]),
        idx,
        int(r[5]),
        int(r[6]),
        float(r[7]),
        float(r[8]),
        int(r[9]),
        None if r[10] is None else str(r[10]),
        None if r[11] is None else float(r[11]),
    )


class Ledger:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    # -- plots ----------------------------------------------------------------

    def plot(self, device_id: str) -> Plot | None:
        r = self.db.execute("SELECT %s FROM audit_plots WHERE device_id=?" % _PLOT_COLS, (device_id,)).fetchone()
        return None if r is None else _plot(r)

    def plots(self) -> Iterator[Plot]:
        for r in self.db.execute("SELECT %s FROM audit_plots ORDER BY device_id" % _PLOT_COLS).fetchall():
            yield _plot(r)

    def new_plot(self, device_id: str, seed: bytes, block_size: int, blocks: int, now: float) -> Plot:
        """Start a plot (the first, or the next after a failure: plot id + 1, stored 0)."""
        with self.store._tx():
            self.db.execute(
                "INSERT INTO audit_plots(device_id, plot, seed, block_size, blocks, stored, sent_at, resends, "
                "created_at) VALUES (?, 1, ?, ?, ?, 0, NULL, 0, ?) ON CONFLICT(device_id) DO UPDATE SET "
                "plot=audit_plots.plot+1, seed=excluded.seed, block_size=excluded.block_size, blocks=excluded.blocks, "
                "stored=0, sent_at=NULL, resends=0, created_at=excluded.created_at",
                (device_id, seed, block_size, blocks, now),
            )
        p = self.plot(device_id)
        assert p is not None
        return p

    def block_stored(self, device_id: str, plot: int, index: int) -> bool:
        """The device acknowledged block ``index``: counts only as the next one in order."""
        with self.store._tx():
            cur = self.db.execute(
                "UPDATE audit_plots SET stored=stored+1, resends=0 WHERE device_id=? AND plot=? "
                "AND stored=? AND stored<blocks",
                (device_id, plot, index),
            )
        return cur.rowcount == 1

    def blocks_sent(self, device_id: str, now: float, resend: bool) -> None:
        with self.store._tx():
            self.db.execute(
                "UPDATE audit_plots SET sent_at=?, resends=resends+? WHERE device_id=?",
                (now, 1 if resend else 0, device_id),
            )

    # -- challenges -------------------------------------------------------------

    def add_challenge(self, p: Plot, nonce: bytes, indices: list[int], now: float, deadline: float) -> Challenge:
        with self.store._tx():
            cid = self.store.insert_id(
                "INSERT INTO audit_challenges(device_id, plot, nonce, indices, blocks, block_size, sent_at, "
                "deadline) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (p.device_id, p.plot, nonce, json.dumps(indices), p.stored, p.block_size, now, deadline),
            )
        c = self.challenge_by_id(cid)
        assert c is not None
        return c

    def challenge_by_id(self, cid: int) -> Challenge | None:
        r = self.db.execute("SELECT %s FROM audit_challenges WHERE id=?" % _CH_COLS, (cid,)).fetchone()
        return None if r is None else _challenge(r)

    def challenge(self, nonce: bytes) -> Challenge | None:
        r = self.db.execute("SELECT %s FROM audit_challenges WHERE nonce=?" % _CH_COLS, (nonce,)).fetchone()
        return None if r is None else _challenge(r)

    def open_challenges(self) -> list[Challenge]:
        return [
            _challenge(r)
            for r in self.db.execute(
                "SELECT %s FROM audit_challenges WHERE outcome IS NULL ORDER BY deadline" % _CH_COLS
            ).fetchall()
        ]

    def last_challenge_times(self) -> dict[str, float]:
        """device -> when its last challenge on its current plot was sent (devices with none are
        absent): one query for a whole planning pass, not one per device."""
        return {
            str(d): float(t)
            for d, t in self.db.execute(
                "SELECT c.device_id, MAX(c.sent_at) FROM audit_challenges c "
                "JOIN audit_plots p ON p.device_id = c.device_id AND p.plot = c.plot GROUP BY c.device_id"
            )
        }

    def retry(self, cid: int, deadline: float, count_attempt: bool) -> None:
        with self.store._tx():
            self.db.execute(
                "UPDATE audit_challenges SET deadline=?, attempts=attempts+? WHERE id=? AND outcome IS NULL",
                (deadline, 1 if count_attempt else 0, cid),
            )

    def resolve(self, cid: int, outcome: str, now: float) -> bool:
        with self.store._tx():
            cur = self.db.execute(
                "UPDATE audit_challenges SET outcome=?, resolved_at=? WHERE id=? AND outcome IS NULL",
                (outcome, now, cid),
            )
        return cur.rowcount == 1

    def prune(self, before: float) -> int:
        """Forget challenges resolved before ``before`` (outside every window still read)."""
        with self.store._tx():
            cur = self.db.execute("DELETE FROM audit_challenges WHERE outcome IS NOT NULL AND resolved_at<?", (before,))
        return cur.rowcount

    # -- counts per fleet (the durable side of the metrics) ------------------------

    def add_counts(self, counts: dict[tuple[str, str], int]) -> None:
        with self.store._tx():
            self.db.executemany(
                "INSERT INTO audit_counts(fleet, outcome, count) VALUES (?, ?, ?) "
                "ON CONFLICT(fleet, outcome) DO UPDATE SET count=audit_counts.count+excluded.count",
                [(f, o, n) for (f, o), n in counts.items()],
            )

    def counts(self) -> dict[str, dict[str, int]]:
        """{fleet: {outcome: count}}, for `surge gateway status` and the tests."""
        out: dict[str, dict[str, int]] = {}
        for fleet, outcome, n in self.db.execute("SELECT fleet, outcome, count FROM audit_counts"):
            out.setdefault(str(fleet), {})[str(outcome)] = int(n)
        return out
