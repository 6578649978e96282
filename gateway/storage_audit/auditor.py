"""The storage audit's decisions, on the database but off the network (docs/protocol.md §10).

:class:`Auditor` is driven by the audit stage (gateway/storage_audit/stage.py)
and by tests with a clock of their own: ``on_message`` takes what a device
sent on its ``audit`` topic, ``tick`` returns the ``cmd`` messages due now
(plot blocks, new challenges, retries), ``resume`` those to send again after
the gateway's own connection to the broker was down.

Rules:

* A device gets a plot once it has reported within the audit window: its
  board's block size (core.block_size_for), as many blocks as the
  configured slice and its last reported free storage allow.
* Blocks go out in order, at most ``window_blocks`` unacknowledged per device
  and ``blocks_per_s`` over the whole gateway, so plotting never crowds out
  reports; unacknowledged blocks are sent again after ``deadline_s``,
  backing off while the device stays silent.
* A challenge is due when the plot is complete (or ``interval_s`` after it was
  started, for a device that stopped acknowledging blocks), then every
  ``interval_s``; one is open per device at a time, over the blocks the
  device had acknowledged when it was sent.
* An answer after the deadline is ``late`` and changes nothing; at the deadline
  the same challenge (same nonce and blocks) goes again, ``retries`` times,
  before it counts as ``timed_out`` (Storj's containment: going offline does
  not dodge an audit).  The gateway's own outage never counts: on reconnect
  open challenges get a fresh deadline (``resume``).
* A wrong answer, or a device saying it lacks the plot or a block, is
  ``failed``; the device then gets a new plot (new seed, plot id + 1) to
  earn its standing back in a later window.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from typing import Callable

import cbor2

from surge_protocol import claims as C
from gateway.envelope import payload_at
from gateway.ingest import RateLimiter
from gateway.storage_audit import core
from gateway.storage_audit.ledger import Challenge, Ledger, Plot
from gateway.store import Store
from surge_protocol import topics

log = logging.getLogger("surge.gateway.audit")

AUDIT_TOPIC = re.compile(r"^surge/v1/([a-z0-9-]{1,32})/([0-9a-f]{16})/audit$")
PRUNE_EVERY_S = 60.0
NO_FLEET = "-"  # the fleet label of a message whose topic names none
Message = tuple[str, bytes]
CountFn = Callable[[str, str, int], None]


@dataclass(frozen=True)
class AuditSettings:
    plot_bytes: int = 4 << 20  # the slice of a CPython device (4 MiB)
    plot_bytes_small: int = 64 << 10  # of a MicroPython board (64 KiB of flash)
    k: int = 16  # blocks per challenge
    interval_s: float = 600.0  # between challenges of one device
    deadline_s: float = 30.0  # to answer one attempt
    retries: int = 2  # attempts after the first, on a timeout
    window_s: float = 3600.0  # the standing's window (standing.py)
    blocks_per_s: float = 50.0  # plot blocks sent per second, whole gateway
    window_blocks: int = 8  # unacknowledged plot blocks per device
    plan_every_s: float = 1.0  # how often new plots and challenges are looked for


class Auditor:
    def __init__(
        self,
        store: Store,
        settings: AuditSettings,
        on_count: CountFn | None = None,
        runtime_of: Callable[[str], str] | None = None,
        entropy: Callable[[int], bytes] = secrets.token_bytes,
    ):
        self.store = store
        self.ledger = Ledger(store)
        self.s = settings
        self.on_count = on_count
        self.runtime_of = runtime_of or _board_runtime
        self.entropy = entropy
        # device -> (next block index to send, when a block was last sent); in
        # memory only: after a restart sending resumes from the acknowledged count.
        self.inflight: dict[str, tuple[int, float]] = {}
        self.fleets: dict[str, str] = {}
        self.tokens = 0.0
        self.refilled: float | None = None
        self.last_plan = float("-inf")
        self.last_prune = float("-inf")
        self.pending_counts: dict[tuple[str, str], int] = {}
        # Devices whose plot is not complete, refreshed by each planning pass, so
        # that a tick (every 50 ms) reads only their rows.
        self.incomplete: set[str] = set()
        # Per device: acknowledgements come at most at the plotting rate, answers rarely.
        self.limiter = RateLimiter(settings.blocks_per_s + 2.0, 2 * settings.window_blocks + 10)

    # -- counting -----------------------------------------------------------

    def _count(self, fleet: str, outcome: str, n: int = 1) -> None:
        # Written to the database once per planning pass (flush_counts), not in
        # a transaction of its own per block acknowledged.
        key = (fleet, outcome)
        self.pending_counts[key] = self.pending_counts.get(key, 0) + n
        if self.on_count is not None:
            self.on_count(fleet, outcome, n)

    def count_error(self, topic: str) -> None:
        m = AUDIT_TOPIC.match(topic)
        self._count(m.group(1) if m else NO_FLEET, "error")

    def flush_counts(self) -> None:
        if self.pending_counts:
            self.ledger.add_counts(self.pending_counts)
            self.pending_counts = {}

    def _fleet(self, device_id: str) -> str:
        f = self.fleets.get(device_id)
        if f is None:
            d = self.store.device(device_id)
            f = d.fleet if d is not None else NO_FLEET
            self.fleets[device_id] = f
        return f

    def _cmd_topic(self, device_id: str) -> str:
        return topics.topic(self._fleet(device_id), device_id, "cmd")

    # -- device messages ----------------------------------------------------

    def on_message(self, topic: str, payload: bytes, now: float) -> str:
        """Handle one ``audit`` message; returns its outcome (also counted per fleet):
        ``stored``, ``passed``, ``failed``, or the reason it was dropped."""
        m = AUDIT_TOPIC.match(topic)
        if m is None:
            self._count(NO_FLEET, "bad_topic")
            return "bad_topic"
        fleet, device_id = m.group(1), m.group(2)
        dev = self.store.device(device_id)
        if dev is None or not dev.active or dev.fleet != fleet:
            self._count(fleet, "unknown_device")
            return "unknown_device"
        if not self.limiter.allow(device_id, now):
            self._count(fleet, "rate_limited")
            return "rate_limited"
        try:
            msg = core.parse_audit(payload)
        except core.AuditError as exc:
            self._count(fleet, exc.reason)
            return exc.reason
        if isinstance(msg, core.Stored):
            if self.ledger.block_stored(device_id, msg.plot, msg.index):
                self._count(fleet, "blocks_stored")
                return "stored"
            self._count(fleet, "ack_ignored")  # a repeat, or a plot replaced since
            return "ack_ignored"
        return self._answer(fleet, device_id, msg, now)

    def _answer(self, fleet: str, device_id: str, ans: core.Answer, now: float) -> str:
        ch = self.ledger.challenge(ans.nonce)
        if ch is None:
            self._count(fleet, "unknown_nonce")
            return "unknown_nonce"
        if ch.device_id != device_id:
            self._count(fleet, "other_device")
            return "other_device"
        if ch.outcome is not None:
            self._count(fleet, "already_resolved")
            return "already_resolved"
        if now > ch.deadline:
            self._count(fleet, "late")
            return "late"
        p = self.ledger.plot(device_id)
        if p is None or p.plot != ch.plot:
            outcome = core.FAILED
        else:
            outcome = core.judge(ans, p.seed, ch.plot, ch.block_size, ch.nonce, ch.indices)
        if not self.ledger.resolve(ch.id, outcome, now):
            self._count(fleet, "already_resolved")
            return "already_resolved"
        self._count(fleet, outcome)
        if outcome == core.FAILED:
            log.warning(
                "device %s failed a storage challenge on plot %d (%s); it gets a new plot",
                device_id,
                ch.plot,
                ans.error or "wrong answer",
            )
            if p is not None:
                self.ledger.new_plot(device_id, self.entropy(core.SEED_BYTES), p.block_size, p.blocks, now)
                self.inflight.pop(device_id, None)
                self.incomplete.add(device_id)
        return outcome

    # -- what to send -------------------------------------------------------

    def tick(self, now: float) -> list[Message]:
        out: list[Message] = []
        if now - self.last_plan >= self.s.plan_every_s:
            self.last_plan = now
            self._plan(now, out)
            self.flush_counts()
            if now - self.last_prune >= PRUNE_EVERY_S:
                # Two windows back: the standing reads one, at times up to "now".
                self.last_prune = now
                self.ledger.prune(now - 2 * self.s.window_s)
        self._expire(now, out)
        self._plot_blocks(now, out)
        return out

    def resume(self, now: float) -> list[Message]:
        """After the gateway's own reconnect: open challenges again, with a fresh deadline."""
        self.inflight.clear()
        out: list[Message] = []
        for ch in self.ledger.open_challenges():
            self.ledger.retry(ch.id, now + self.s.deadline_s, count_attempt=False)
            out.append(self._challenge_msg(ch))
        return out

    def _challenge_msg(self, ch: Challenge) -> Message:
        return self._cmd_topic(ch.device_id), core.challenge_command(
            ch.plot, ch.nonce, ch.indices, int(self.s.deadline_s * 1000)
        )

    def _plan(self, now: float, out: list[Message]) -> None:
        self.incomplete = self.ledger_incomplete()
        recent = self.ledger_recent(now - self.s.window_s)
        plots = {p.device_id: p for p in self.ledger.plots()}
        open_devices = {c.device_id for c in self.ledger.open_challenges()}
        last_sent = self.ledger.last_challenge_times()
        for device_id, board, fleet in recent:
            self.fleets[device_id] = fleet
            p = plots.get(device_id)
            if p is None:
                self._start_plot(device_id, board, now)
                continue
            if p.stored < 1 or device_id in open_devices:
                continue
            last = last_sent.get(device_id)
            if last is None:
                due = p.stored >= p.blocks or now - p.created_at >= self.s.interval_s
            else:
                due = now - last >= self.s.interval_s
            if due:
                nonce = self.entropy(core.NONCE_BYTES)
                indices = core.choose_indices(self.entropy(32), p.stored, self.s.k)
                ch = self.ledger.add_challenge(p, nonce, indices, now, now + self.s.deadline_s)
                out.append(self._challenge_msg(ch))
                self._count(fleet, "sent")

    def _start_plot(self, device_id: str, board: str, now: float) -> None:
        size = core.block_size_for(self.runtime_of(board))
        limit = self.s.plot_bytes_small if size == core.BLOCK_SMALL else self.s.plot_bytes
        blocks = core.plot_blocks(limit, size, self._free_storage(device_id))
        if blocks < 1:
            return
        self.ledger.new_plot(device_id, self.entropy(core.SEED_BYTES), size, blocks, now)
        self.incomplete.add(device_id)
        log.info("device %s: plot of %d blocks of %d bytes", device_id, blocks, size)

    def _expire(self, now: float, out: list[Message]) -> None:
        for ch in self.ledger.open_challenges():
            if ch.deadline >= now:
                break  # ordered by deadline
            fleet = self._fleet(ch.device_id)
            if ch.attempts <= self.s.retries:
                self.ledger.retry(ch.id, now + self.s.deadline_s, count_attempt=True)
                out.append(self._challenge_msg(ch))
                self._count(fleet, "retried")
            elif self.ledger.resolve(ch.id, core.TIMED_OUT, now):
                self._count(fleet, core.TIMED_OUT)
                log.warning("device %s did not answer a storage challenge in %d attempts", ch.device_id, ch.attempts)

    def _plot_blocks(self, now: float, out: list[Message]) -> None:
        rate = self.s.blocks_per_s
        if self.refilled is not None:
            self.tokens = min(max(rate, 1.0), self.tokens + (now - self.refilled) * rate)
        self.refilled = now
        if self.tokens < 1.0:
            return
        for device_id in list(self.incomplete):
            if self.tokens < 1.0:
                return
            p = self.ledger.plot(device_id)
            if p is None or p.stored >= p.blocks:
                self.incomplete.discard(device_id)
                continue
            self._send_blocks(p, now, out)

    def _send_blocks(self, p: Plot, now: float, out: list[Message]) -> None:
        # After a restart nothing is known to be in flight: start again from the
        # acknowledged count (the device acknowledges a block it holds again).
        nxt, last = self.inflight.get(p.device_id, (p.stored, float("-inf")))
        nxt = max(nxt, p.stored)
        resend = False
        wait = min(self.s.interval_s, self.s.deadline_s * 2 ** min(p.resends, 6))
        if nxt > p.stored and now - last >= wait:
            nxt, resend = p.stored, True  # unacknowledged for too long: go back to the first
        sent = 0
        end = min(p.blocks, p.stored + self.s.window_blocks)
        topic = self._cmd_topic(p.device_id)
        while nxt < end and self.tokens >= 1.0:
            out.append((topic, core.store_command(p.plot, nxt, core.block(p.seed, p.plot, nxt, p.block_size))))
            nxt += 1
            sent += 1
            self.tokens -= 1.0
        if sent:
            self.inflight[p.device_id] = (nxt, now)
            self.ledger.blocks_sent(p.device_id, now, resend)
            self._count(self._fleet(p.device_id), "blocks_sent", sent)

    # -- reads --------------------------------------------------------------

    def ledger_recent(self, since: float) -> list[tuple[str, str, str]]:
        """(device_id, board, fleet) of active devices that reported after ``since``."""
        return [
            (str(a), str(b), str(c))
            for a, b, c in self.store.db.execute(
                "SELECT d.device_id, d.board, d.fleet FROM devices d JOIN device_state s USING (device_id) "
                "WHERE d.revoked_at IS NULL AND s.last_seen > ? ORDER BY d.device_id",
                (since,),
            )
        ]

    def ledger_incomplete(self) -> set[str]:
        return {str(r[0]) for r in self.store.db.execute("SELECT device_id FROM audit_plots WHERE stored < blocks")}

    def _free_storage(self, device_id: str) -> int | None:
        row = self.store.db.execute(
            "SELECT cose FROM reports WHERE device_id=? ORDER BY id DESC LIMIT 1", (device_id,)
        ).fetchone()
        if row is None:
            return None
        cose = bytes(row[0])
        payload = payload_at(cose)
        claims = cbor2.loads(payload if payload is not None else cbor2.loads(cose).value[2])
        free = claims.get(C.SURGE, {}).get(C.STORAGE_FREE)
        return int(free) if isinstance(free, int) else None


def _board_runtime(board: str) -> str:
    try:
        import boards

        return str(boards.load(board).runtime)
    except Exception:  # an unknown or custom profile: a Linux machine's blocks
        return "cpython"
