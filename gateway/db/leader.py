"""Which gateway of a cluster runs the pipeline: a PostgreSQL session advisory lock.

Every gateway on one PostgreSQL database ingests (a shared MQTT subscription
spreads the reports); batching, anchoring, receipts, reward epochs and the
storage audit run on one of them at a time, the holder of this lock.  The lock
lives on a connection of its own: when the leader dies, or its connection
drops, PostgreSQL frees the lock and the next gateway to ask takes it, then
resumes from what the database holds (the same paths as a restart after a
crash).  On SQLite (one gateway per file) the gateway always leads.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.db import StoreError, is_postgres

log = logging.getLogger("surge.gateway.leader")

# pg_try_advisory_lock key of the pipeline ("surge-lead" in ASCII, 8 bytes).
LEADER_LOCK = 0x7375726765_6C6561
# First half of the two-int key each member holds for its node name ("surg").
NODE_LOCK_CLASS = 0x73757267


class Leadership:
    """``poll()`` says whether this gateway leads now; cheap enough to call every pass."""

    def __init__(self, target: str, node: str | None = None) -> None:
        self.target = target
        self.node = node or ""
        self.cluster = is_postgres(target)
        self.conn: Any = None
        self.leading = not self.cluster
        self.unreachable = False  # logged once per outage
        if self.cluster:
            from gateway.db.postgres import open_raw

            self.conn = open_raw(target, application_name="surge-leader")
            if not self._claim_node():
                self._drop()
                raise StoreError(
                    "another gateway of this cluster is running as node %r: two members with one name would "
                    "share MQTT client ids and take each other's sessions; give each gateway its own --node "
                    "(config key node)" % self.node
                )

    def _claim_node(self) -> bool:
        """Hold the lock on this member's name for as long as the session lives."""
        row = self.conn.execute(
            "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (NODE_LOCK_CLASS, self.node)
        ).fetchone()
        return bool(row[0])

    def poll(self) -> bool:
        if not self.cluster:
            return True
        import psycopg
        from gateway.db.postgres import open_raw, redact

        try:
            if self.conn is None or self.conn.closed or self.conn.broken:
                self._drop()
                self.conn = open_raw(self.target, application_name="surge-leader")
                if not self._claim_node():
                    log.error(
                        "node name %r is now held by another gateway of the cluster; give each gateway its own --node",
                        self.node,
                    )
            if self.leading:
                self.conn.execute("SELECT 1")  # the lock is ours as long as this session lives
            else:
                row = self.conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()
                self.leading = bool(row[0])
                if self.leading:
                    log.info("leading the cluster: this gateway now batches, anchors and sends receipts")
            if self.unreachable:
                log.info("the leader lock's connection to PostgreSQL %s is back", redact(self.target))
                self.unreachable = False
        except psycopg.Error as exc:
            if self.leading:
                log.warning(
                    "lost the leader lock (connection to PostgreSQL %s: %s); pipeline paused, another "
                    "gateway takes over; this one asks again",
                    redact(self.target),
                    str(exc).strip().splitlines()[0] if str(exc).strip() else exc,
                )
            elif not self.unreachable:
                log.warning(
                    "cannot reach PostgreSQL %s for the leader lock (%s); retrying",
                    redact(self.target),
                    str(exc).strip().splitlines()[0] if str(exc).strip() else exc,
                )
            self.unreachable = True
            self.leading = False
            self._drop()
        return self.leading

    def _drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
        self.conn = None

    def release(self) -> None:
        """Closing the session frees the lock; the next gateway's poll takes it."""
        self._drop()
        self.leading = not self.cluster
