"""Ingest stage: MQTT in, verified outcomes durably committed, then acknowledged.

One thread owns the ingest connection (gateway/mqtt_client.py, MQTT 5 or
3.1.1) and does everything in turn: read whatever the broker has sent, verify
a group of messages, commit the group's outcomes (accepted reports and
rejections) in one SQLite transaction, and only then send the group's PUBACKs
in one write.  If a commit fails (disk full, database locked) nothing is
acknowledged: the messages stay held here and, should the process die, with
the broker, which redelivers them to the persistent session.  The broker
sends at most Receive Maximum unacknowledged messages, which bounds what is
held.  It runs in a process of its own (gateway/ingest_process.py); what
integrators see of an accepted report (`verified`, `rejected` receipts) is
published by the pipeline from the database (gateway/republish.py).

With ``source`` set (``--source amqp://...``) the reports come from a RabbitMQ
quorum queue instead of the MQTT subscription (gateway/source_amqp.py); the
loop is the same (commit, then acknowledge), and the MQTT connection stays
for the gateway's status only, retried aside when its node is gone so that
ingest goes on through the queue.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass


import boards
from surge_protocol import claims as C
from boards import BoardProfile
from firmware_shim import cose
from gateway import envelope
from gateway.config import GatewayConfig
from gateway.db import DB_ERRORS
from gateway import rotation
from gateway.faults import crash_point
from gateway.metrics import IngestMetrics
from gateway.mqtt_client import Connection, Incoming, MQTTError, Refused, Will, backoff_delays
from gateway.store import AcceptedRow, Device, DeviceState, RejectedRow, Store
from gateway.verify import Accepted, Duplicate, Limits, Outcome, Rejection, Verifier, parse_topic
from gateway.probe_check import RunResult
from gateway.probe_listener import ProbeListener
from gateway.source_amqp import AmqpSource, SourceError, parse_source
from surge_protocol import topics

log = logging.getLogger("surge.gateway.ingest")

SESSION_EXPIRY_S = 7 * 86400
_STATUS_RETRY_S = 5.0  # source mode: how often a lost MQTT status connection is retried
_INSERT_PROBE_RUN = (
    "INSERT INTO probe_runs(device_id, boot, seq, outcome, bw_up, bytes, chunks, "
    "elapsed_us, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(device_id, boot, seq) DO UPDATE "
    "SET outcome=excluded.outcome, bw_up=excluded.bw_up, bytes=excluded.bytes, "
    "chunks=excluded.chunks, elapsed_us=excluded.elapsed_us, at=excluded.at"
)


@dataclass
class TokenBucket:
    tokens: float
    updated: float


class RateLimiter:
    """Per-device token bucket, so one chatty device cannot starve the fleet."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.buckets: dict[str, TokenBucket] = {}

    def allow(self, key: str, now: float) -> bool:
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = TokenBucket(float(self.burst), now)
        b.tokens = min(float(self.burst), b.tokens + (now - b.updated) * self.rate)
        b.updated = now
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True


class Ingest:
    def __init__(self, cfg: GatewayConfig, store: Store, metrics: IngestMetrics, gateway_id: str) -> None:
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.gateway_id = gateway_id
        self.limiter = RateLimiter(cfg.rate_limit_per_s, cfg.rate_burst)
        # Enrolled devices by id, until enroll, revoke or a rotation bumps the
        # registry version (_registry_changed). Unknown ids are not kept: a flood of
        # made-up ids must not grow it.
        self.devices: dict[str, Device] = {}
        self.registry_version: str | None = None
        self.states: dict[str, DeviceState] = {}
        self.boards: dict[str, BoardProfile | None] = {}
        self.pending_state: dict[str, DeviceState] = {}
        # Devices of the current group that the prefetch found with no state yet
        # (their first report): without this, each costs one more query
        # (a fleet of 100,000 new devices: one per report, bench group 7).
        self.stateless: set[str] = set()
        self.pending_seen: dict[tuple[str, int, int], bytes] = {}
        self.verifier = Verifier(
            self._device,
            self._state,
            self._seen,
            self._board,
            Limits(max_bytes=cfg.max_report_bytes),
            around=self._around,
        )
        self.connected = threading.Event()
        self.commit_failing = False
        host, port, tls = cfg.broker_host_port()
        self.host, self.port = host, port
        # Retained gateway status with a last will, like devices have: operators
        # and tests see when this gateway is subscribed and when it is gone.
        self.status_topic = topics.gateway_topic(gateway_id, "status")
        v5 = cfg.mqtt_version == "5"
        self.conn = Connection(
            host,
            port,
            cfg.client_id(gateway_id),
            version=cfg.mqtt_version,
            username=cfg.username,
            password=cfg.password,
            tls=tls,
            ca_file=cfg.broker_ca,
            keepalive=30,
            clean_start=False,
            session_expiry=SESSION_EXPIRY_S if v5 else 0,
            # Bounds what the broker sends before we acknowledge: backpressure
            # when commits stall, instead of unbounded memory here.
            receive_maximum=min(65535, max(100, 4 * cfg.commit_group)) if v5 else None,
            will=Will(self.status_topic, b"offline", qos=1, retain=True),
        )
        # Bandwidth probes: their own connection and thread (gateway/probe_listener.py);
        # accepted reports claim their run here.  Claimed results wait in
        # probe_results until their group is committed, so a retried group keeps them.
        self.probes = ProbeListener(cfg, cfg.db, metrics.probes, gateway_id)
        self._status_retry_at = 0.0
        # Reports from a replicated queue (--source) rather than the MQTT subscription.
        self.source = (
            AmqpSource(parse_source(cfg.source), prefetch=min(65535, max(100, 4 * cfg.commit_group)))
            if cfg.source
            else None
        )
        self.probe_results: dict[tuple[str, int, int], RunResult] = {}

    # -- lookups for the verifier (group-local state first) -----------------
    def _device(self, device_id: str) -> Device | None:
        dev = self.devices.get(device_id)
        if dev is None:
            dev = self.store.device(device_id)
            if dev is not None:
                self.devices[device_id] = dev
        return dev

    def _state(self, device_id: str) -> DeviceState | None:
        st = self.pending_state.get(device_id)
        if st is not None:
            return st
        st = self.states.get(device_id)
        if st is None and device_id not in self.stateless:
            st = self.store.device_state(device_id)
            if st is not None:
                self.states[device_id] = st
        return st

    def _seen(self, device_id: str, boot: int, seq: int) -> bytes | None:
        hit = self.pending_seen.get((device_id, boot, seq))
        return hit if hit is not None else self.store.seen(device_id, boot, seq)

    def _around(self, device_id: str, seq: int) -> dict[int, bytes]:
        """A late report's accepted neighbours: the store's, and this group's not yet committed."""
        near = self.store.reports_around(device_id, seq)
        for (dev, _boot, s), data in self.pending_seen.items():
            if dev == device_id and seq - 1 <= s <= seq + 1:
                near[s] = data
        return near

    def _board(self, name: str) -> BoardProfile | None:
        if name not in self.boards:
            try:
                self.boards[name] = boards.load(name)
            except boards.BoardError:
                self.boards[name] = None
        return self.boards[name]

    def _prefetch(self, group: list[Incoming]) -> None:
        """Load the group's devices that are not cached yet, and their states, in bulk."""
        missing = []
        for msg in group:
            parts = msg.topic.split("/")
            if len(parts) == 5 and parts[3] not in self.devices:
                missing.append(parts[3])
        if not missing:
            return
        for dev, state in self.store.devices_with_state(list(dict.fromkeys(missing))):
            self.devices[dev.device_id] = dev
            if state is None:
                self.stateless.add(dev.device_id)
            elif dev.device_id not in self.states:
                self.states[dev.device_id] = state

    def _registry_changed(self) -> None:
        """Forget cached devices when enroll, revoke or a key rotation changed the registry."""
        version = self.store.meta("registry_version")
        if version != self.registry_version:
            self.registry_version = version
            self.devices.clear()

    # -- MQTT ---------------------------------------------------------------
    def _topic(self, kind: str) -> str:
        t = topics.every_device(kind)
        return "$share/%s/%s" % (self.cfg.share_group, t) if self.cfg.share_group else t

    def run(self, stop: threading.Event) -> None:
        """Connect, subscribe and ingest until ``stop``; reconnect with backoff when the broker goes."""
        delays = backoff_delays(1, 30)
        failing = False
        self.probes.start(stop)
        while not stop.is_set():
            try:
                self._session(stop)
                return
            except Refused as exc:
                log.error("%s", exc)
            except SourceError as exc:
                log.warning("%s; retrying", exc)
            except (MQTTError, OSError) as exc:
                if self.connected.is_set() or not failing:  # once per outage, not at every retry
                    log.warning("lost the broker at %s:%d (%s); reconnecting", self.host, self.port, exc)
            finally:
                if self.connected.is_set():  # it was up: the next outage starts from the shortest delay
                    delays = backoff_delays(1, 30)
                self.connected.clear()
                self.conn.close()
                if self.source is not None:
                    self.source.close()  # what it delivered and we did not acknowledge goes back to the queue
            failing = True
            stop.wait(next(delays))

    def _session(self, stop: threading.Event) -> None:
        conn = self.conn
        if self.source is None:
            conn.connect()
            log.info("connected to %s:%d", self.host, self.port)
            try:
                conn.subscribe([(self._topic("report"), 1), (self._topic("birth"), 1)])
            except Refused as exc:
                raise Refused("%s (check the ACL for this gateway's user)" % exc) from None
            conn.resend_unacked()
            conn.publish([(self.status_topic, b"online", True)])
        else:
            self.source.connect()
            log.info("consuming reports from the queue at %s", self.source.node)
            self._status_retry_at = 0.0
            self._status_connect()
        self.connected.set()
        held: list[Incoming] = []
        arrived: list[float] = []  # time.monotonic() when each held message was read
        retry_at = 0.0
        while not stop.is_set():
            # Drain the socket without waiting while there is work in hand.
            got = self._poll(0.2 if not held else 0.0)
            if got:
                held.extend(got)
                arrived.extend([time.monotonic()] * len(got))
            self.metrics.queue_depth.set(len(held))
            if not held or time.monotonic() < retry_at:
                if held:
                    stop.wait(0.05)
                continue
            group = held[: self.cfg.commit_group]
            try:
                self.process(group, arrived[: len(group)])
            except DB_ERRORS as exc:
                # Nothing was acknowledged: keep the group and try again.
                self.metrics.commit_errors.inc()
                if not self.commit_failing:
                    log.error(
                        "cannot store %d messages: %s; not acknowledging them (the broker keeps "
                        "them) and retrying every second",
                        len(group),
                        exc,
                    )
                self.commit_failing = True
                retry_at = time.monotonic() + 1.0
                continue
            except Exception:  # a bug must not stop ingest; the group stays unacknowledged
                log.exception("unexpected error while processing %d messages", len(group))
                retry_at = time.monotonic() + 1.0
                continue
            del held[: len(group)]
            del arrived[: len(group)]
            self._ack(group)
        # Stopping: what is held was never acknowledged, so the broker keeps it.
        if self.source is not None and not conn.connected:
            return
        conn.publish([(self.status_topic, b"offline", True)])
        conn.wait_acked(5.0)
        conn.disconnect()

    def _poll(self, timeout: float) -> list[Incoming]:
        if self.source is None:
            return self.conn.poll(timeout)
        # With a queue as the source, the MQTT connection only carries our status: losing its
        # node must not stop ingest (the reports come from the other nodes), so it is retried aside.
        if self.conn.connected:
            try:
                self.conn.poll(0.0)  # keepalive and the PUBACKs of our status; nothing is subscribed here
            except (MQTTError, OSError) as exc:
                self.conn.close()
                log.warning(
                    "lost the broker at %s:%d (%s); still consuming reports from the queue, "
                    "reconnecting to the broker every %.0f s",
                    self.host,
                    self.port,
                    exc,
                    _STATUS_RETRY_S,
                )
                self._status_retry_at = time.monotonic() + _STATUS_RETRY_S
        elif time.monotonic() >= self._status_retry_at:
            self._status_connect()
        return self.source.poll(timeout)

    def _status_connect(self) -> None:
        """Source mode: (re)connect the MQTT connection that carries our status; never raises."""
        try:
            self.conn.connect(timeout=2.0)  # short: ingest waits meanwhile
            self.conn.resend_unacked()
            self.conn.publish([(self.status_topic, b"online", True)])
            log.info("connected to %s:%d", self.host, self.port)
        except (MQTTError, OSError) as exc:
            self.conn.close()
            if self._status_retry_at == 0.0:
                log.warning(
                    "cannot reach the broker at %s:%d (%s); consuming reports from the queue anyway, "
                    "reconnecting to the broker every %.0f s",
                    self.host,
                    self.port,
                    exc,
                    _STATUS_RETRY_S,
                )
            self._status_retry_at = time.monotonic() + _STATUS_RETRY_S

    def _ack(self, group: list[Incoming]) -> None:
        if self.source is None:
            self.conn.ack([m.packet_id for m in group if m.qos])
        else:
            self.source.ack([m.packet_id for m in group])

    def process(self, group: list[Incoming], arrived: list[float] | None = None) -> None:
        """Verify one group of messages and commit their outcomes (the caller acknowledges).

        ``arrived``: when each message was read (time.monotonic()), to order a
        report after its probe run; default now.
        """
        now = time.time()
        accepted: list[tuple[Accepted, str]] = []
        rows: list[AcceptedRow] = []
        rejected: list[RejectedRow] = []
        probe_rows: list[tuple[str, int, int, str, int | None, int, int, int, float]] = []
        dupes = 0
        late: list[Accepted] = []
        read_at = time.monotonic()
        self._registry_changed()
        self.stateless.clear()
        if self.store.shared:
            # Other gateways of the cluster accept reports too: this group's devices
            # and states come from the database (one query), never a stale cache.
            self.devices.clear()
            self.states.clear()
        self._prefetch(group)
        self.pending_state.clear()
        self.pending_seen.clear()
        try:
            for i, msg in enumerate(group):
                outcome, fleet = self._verify_one(msg, now)
                if isinstance(outcome, Accepted):
                    accepted.append((outcome, fleet))
                    run = self._probe_run(outcome, fleet, arrived[i] if arrived else read_at)
                    if run is not None:
                        probe_rows.append(
                            (
                                outcome.device.device_id,
                                outcome.boot,
                                outcome.seq,
                                run.outcome,
                                run.bw_up,
                                run.bytes,
                                run.chunks,
                                run.elapsed_us,
                                now,
                            )
                        )
                    rows.append(
                        AcceptedRow(
                            outcome.device.device_id,
                            outcome.boot,
                            outcome.seq,
                            now,
                            outcome.cose,
                            outcome.gap,
                            outcome.report_hash,
                        )
                    )
                    last = self._state(outcome.device.device_id)
                    if last is None or outcome.seq > last.seq:
                        self.pending_state[outcome.device.device_id] = DeviceState(
                            outcome.boot, outcome.seq, outcome.report_hash
                        )
                    else:  # a late report leaves S where it is
                        late.append(outcome)
                    self.pending_seen[(outcome.device.device_id, outcome.boot, outcome.seq)] = outcome.cose
                elif isinstance(outcome, Duplicate):
                    dupes += 1
                elif outcome is not None:
                    # The stored copy is capped; the digest is of the whole message.
                    rejected.append(
                        RejectedRow(
                            now,
                            msg.topic[:200],
                            outcome.device_id,
                            outcome.reason,
                            outcome.detail[:500],
                            msg.payload[:2048],
                            hashlib.sha256(msg.payload).hexdigest(),
                        )
                    )
            with self.store._tx():  # the probe results commit with their reports, or neither does
                stored_before = self.store.commit_outcomes(rows, rejected)
                # In a cluster any accepted report may have been overtaken by its successor
                # (verified on another gateway at the same time); alone, only a late one can.
                self._heal_gaps([a for a, _ in accepted] if self.store.shared else late)
                if probe_rows:
                    self.store.db.executemany(_INSERT_PROBE_RUN, probe_rows)
            crash_point("ingest-committed")
            self.probe_results.clear()
            self.states.update(self.pending_state)
        finally:
            self.pending_state.clear()
            self.pending_seen.clear()
        if self.commit_failing:
            log.info("store writable again; resumed acknowledging")
            self.commit_failing = False
        rotation.note_announcements(self.store, accepted)  # key rotation, protocol §3.1 (rare; cheap check)
        # A report another gateway of the cluster stored first is a duplicate here.
        self.metrics.accepted.inc(len(rows) - stored_before)
        self.metrics.duplicates.inc(dupes + stored_before)
        for r in rejected:
            self.metrics.rejected.labels(r.reason).inc()
            if r.reason != "rate_limited":  # a flood must not become a flood of log lines; metrics count it
                log.info("rejected %s: %s (%s)", r.device_id or r.topic, r.reason, r.detail)
        for acc, fleet in accepted:
            if acc.gap:
                self.metrics.gaps.inc()
                log.info("gap for %s at boot %d seq %d: %s", acc.device.device_id, acc.boot, acc.seq, acc.gap_detail)

    def _heal_gaps(self, accepted: list[Accepted]) -> None:
        """Clear the gap of a report that was recorded with one only because it was stored before
        its predecessor: ``accepted``'s successors, and those of ``accepted`` that came with a gap,
        whenever the predecessor is now stored and the report's ``prev`` is its hash.

        Runs inside the commit's transaction (on PostgreSQL under the outcomes
        lock), so the rows read here are the ones stored."""
        if not accepted:
            return
        keys = [(a.device.device_id, a.seq) for a in accepted]
        wanted = keys + [(d, s + 1) for d, s in keys] + [(d, s - 1) for (d, s), a in zip(keys, accepted) if a.gap]
        rows = self.store.reports_at(wanted)
        for (device_id, seq), (report_id, gap, data) in rows.items():
            pred = rows.get((device_id, seq - 1))
            if gap and pred is not None and _prev_of(data) == C.prev_hash(pred[2]):
                self.store.clear_gap(report_id, device_id)

    def _probe_run(self, acc: Accepted, fleet: str, arrived: float) -> RunResult | None:
        key = (acc.device.device_id, acc.boot, acc.seq)
        run = self.probe_results.get(key)
        if run is None:
            run = self.probes.claim(acc.device.device_id, fleet, acc.boot, acc.seq, arrived)
            if run is not None:
                self.probe_results[key] = run
        return run

    def _verify_one(self, msg: Incoming, now: float) -> tuple[Outcome | None, str]:
        parsed = parse_topic(msg.topic)
        if isinstance(parsed, Rejection):
            return parsed, ""
        fleet, device_id, kind = parsed
        if not self.limiter.allow(device_id, now):
            return Rejection(
                "rate_limited",
                "more than %.1f messages/s (burst %d)" % (self.cfg.rate_limit_per_s, self.cfg.rate_burst),
                device_id,
            ), fleet
        data = msg.payload
        if kind == "birth":
            self._birth(device_id, data)
            return None, fleet
        if kind != "report":
            return Rejection("bad_topic", "unexpected topic kind %r" % kind, device_id), fleet
        outcome = self.verifier.verify(device_id, data, now)
        if isinstance(outcome, Accepted) and outcome.device.fleet != fleet:
            return Rejection(
                "unknown_device",
                "device %s is enrolled in fleet %s, not %s" % (device_id, outcome.device.fleet, fleet),
                device_id,
            ), fleet
        return outcome, fleet

    def _birth(self, device_id: str, data: bytes) -> None:
        dev = self._device(device_id)
        if dev is None or not dev.active:
            self.metrics.births.labels("unknown_device").inc()
            return
        try:
            env = envelope.parse(data) if len(data) <= self.cfg.max_report_bytes else None
        except cose.COSEError:
            env = None
        if env is None or env.kid != C.kid(dev.pubkey):  # the current key, also after a rotation
            self.metrics.births.labels("malformed").inc()
            return
        if not envelope.verify(env, dev.pubkey):
            self.metrics.births.labels("bad_signature").inc()
            return
        self.metrics.births.labels("ok").inc()
        model = env.claims.get(C.HWMODEL)
        if isinstance(model, str) and model != dev.board:
            log.warning("device %s says it is a %s but is enrolled as %s", device_id, model, dev.board)


def _prev_of(data: bytes) -> bytes | None:
    """The ``prev`` claim of stored (once verified) report bytes; None if unreadable."""
    try:
        surge = envelope.parse(data).claims.get(C.SURGE)
    except cose.COSEError:
        return None
    prev = surge.get(C.PREV) if isinstance(surge, dict) else None
    return prev if isinstance(prev, bytes) else None
