"""Ingest stage: MQTT in, verified outcomes durably committed, then acknowledged.

paho-mqtt (MQTT v5) delivers report and birth messages with manual
acknowledgement.  A worker thread verifies messages in groups and commits
each group's outcomes (accepted reports and rejections) in one SQLite
transaction; only after that commit does it send the PUBACKs.  If a commit
fails (disk full, database locked) nothing is acknowledged: the messages stay
queued here and, should the process die, with the broker, which redelivers
them to the persistent session.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import boards
from agent import claims as C
from boards import BoardProfile
from firmware_shim import cose
from gateway import envelope
from gateway.config import GatewayConfig
from gateway import rotation
from gateway.faults import crash_point
from gateway.metrics import Metrics
from gateway.republish import Publisher, verified_body
from gateway.store import AcceptedRow, Device, DeviceState, RejectedRow, Store
from gateway.verify import Accepted, Duplicate, Limits, Outcome, Rejection, Verifier, parse_topic

log = logging.getLogger("surge.gateway.ingest")

SESSION_EXPIRY_S = 7 * 86400
DEVICE_CACHE_TTL_S = 5.0


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


def verified_json(acc: Accepted, fleet: str, received_at: float, batch: dict[str, Any] | None) -> bytes:
    """The integrator-facing JSON of one accepted report (docs/protocol.md)."""
    return verified_body(acc.device.device_id, fleet, acc.device.board, acc.boot, acc.seq, received_at, acc.gap,
                         acc.claims, acc.cose, batch)


def _verified_messages(accepted: list[tuple[Accepted, str]], now: float) -> list[tuple[str, bytes]]:
    """The first `verified` message of each accepted report; built on the publisher thread."""
    return [("surge/v1/%s/%s/verified" % (fleet, acc.device.device_id), verified_json(acc, fleet, now, None))
            for acc, fleet in accepted]


class Ingest:
    def __init__(self, cfg: GatewayConfig, store: Store, metrics: Metrics, gateway_id: str,
                 publisher: Publisher | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.gateway_id = gateway_id
        self.queue: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.limiter = RateLimiter(cfg.rate_limit_per_s, cfg.rate_burst)
        self.devices: dict[str, tuple[Device | None, float]] = {}
        self.states: dict[str, DeviceState] = {}
        self.boards: dict[str, BoardProfile | None] = {}
        self.pending_state: dict[str, DeviceState] = {}
        self.pending_seen: dict[tuple[str, int, int], bytes] = {}
        self.verifier = Verifier(self._device, self._state, self._seen, self._board,
                                 Limits(max_bytes=cfg.max_report_bytes))
        self.stop_event = threading.Event()
        self.connected = threading.Event()
        self.commit_failing = False
        self.worker = threading.Thread(target=self._run, name="surge-ingest", daemon=True)
        host, port, tls = cfg.broker_host_port()
        v5 = cfg.mqtt_version == "5"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="surge-gw-%s" % gateway_id,
                                  protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                                  clean_session=None if v5 else False, manual_ack=True)
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password)
        if tls:
            self.client.tls_set(ca_certs=cfg.broker_ca)
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(1000)
        # Retained gateway status with a last will, like devices have: operators
        # and tests see when this gateway is subscribed and when it is gone.
        self.status_topic = "surge/v1/_gateway/%s/status" % gateway_id
        self.client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 30)
        self.host, self.port = host, port
        # Outgoing messages use a connection and threads of their own (gateway/republish.py).
        self.publisher = publisher if publisher is not None else Publisher(cfg, gateway_id)

    # -- lookups for the verifier (group-local state first) -----------------
    def _device(self, device_id: str) -> Device | None:
        now = time.monotonic()
        hit = self.devices.get(device_id)
        if hit is not None and now - hit[1] < DEVICE_CACHE_TTL_S:
            return hit[0]
        dev = self.store.device(device_id)
        self.devices[device_id] = (dev, now)
        return dev

    def _state(self, device_id: str) -> DeviceState | None:
        st = self.pending_state.get(device_id)
        if st is not None:
            return st
        st = self.states.get(device_id)
        if st is None:
            st = self.store.device_state(device_id)
            if st is not None:
                self.states[device_id] = st
        return st

    def _seen(self, device_id: str, boot: int, seq: int) -> bytes | None:
        hit = self.pending_seen.get((device_id, boot, seq))
        return hit if hit is not None else self.store.seen(device_id, boot, seq)

    def _board(self, name: str) -> BoardProfile | None:
        if name not in self.boards:
            try:
                self.boards[name] = boards.load(name)
            except boards.BoardError:
                self.boards[name] = None
        return self.boards[name]

    # -- MQTT ---------------------------------------------------------------
    def start(self) -> None:
        if self.cfg.mqtt_version == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            # Bounds what the broker sends before we acknowledge: backpressure
            # when commits stall, instead of unbounded memory here.
            props.ReceiveMaximum = min(65535, max(100, 4 * self.cfg.commit_group))
            self.client.connect_async(self.host, self.port, keepalive=30, clean_start=False, properties=props)
        else:
            # MQTT 3.1.1: the session persists through clean_session=False (set
            # on the client); max_inflight_messages bounds what is unacknowledged.
            self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        self.publisher.start()
        self.worker.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.worker.join(timeout=30)
        self.publisher.stop()
        self.client.publish(self.status_topic, b"offline", qos=1, retain=True).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()

    def _topic(self, kind: str) -> str:
        t = "surge/v1/+/+/%s" % kind
        return "$share/%s/%s" % (self.cfg.share_group, t) if self.cfg.share_group else t

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            log.error("broker refused the connection: %s", rc)
            return
        log.info("connected to %s:%d", self.host, self.port)
        client.subscribe([(self._topic("report"), 1), (self._topic("birth"), 1)])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any = None) -> None:
        if any(rc.is_failure for rc in rcs):
            log.error("broker refused the subscriptions: %s (check the ACL for this gateway's user)", rcs)
            return
        client.publish(self.status_topic, b"online", qos=1, retain=True)
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.connected.clear()
        if not self.stop_event.is_set():
            log.warning("lost the broker (%s); reconnecting", rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.queue.put(msg)
        self.metrics.queue_depth.inc()

    # -- worker -------------------------------------------------------------
    def _drain(self) -> list[mqtt.MQTTMessage]:
        try:
            first = self.queue.get(timeout=0.2)
        except queue.Empty:
            return []
        group = [first]
        while len(group) < self.cfg.commit_group:
            try:
                group.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return group

    def _run(self) -> None:
        held: list[mqtt.MQTTMessage] = []
        while not self.stop_event.is_set() or held:
            group = held or self._drain()
            if not group:
                continue
            held = []
            try:
                self.process(group)
            except sqlite3.Error as exc:
                # Nothing was acknowledged: keep the group and try again.
                self.metrics.commit_errors.inc()
                if not self.commit_failing:
                    log.error("cannot store %d messages: %s; not acknowledging them (the broker keeps "
                              "them) and retrying every second", len(group), exc)
                self.commit_failing = True
                held = group
                if self.stop_event.wait(1.0):
                    return  # shutting down: the broker redelivers what we never acknowledged
            except Exception:  # a bug must not stop ingest; the group stays unacknowledged
                log.exception("unexpected error while processing %d messages", len(group))
                held = group
                self.stop_event.wait(1.0)

    def process(self, group: list[mqtt.MQTTMessage]) -> None:
        """Verify, commit, then acknowledge one group of messages."""
        now = time.time()
        accepted: list[tuple[Accepted, str]] = []
        rows: list[AcceptedRow] = []
        rejected: list[RejectedRow] = []
        digests: list[str] = []  # SHA-256 of each rejected message, whole (the stored copy is capped)
        dupes = 0
        self.pending_state.clear()
        self.pending_seen.clear()
        try:
            for msg in group:
                outcome, fleet = self._verify_one(msg, now)
                if isinstance(outcome, Accepted):
                    accepted.append((outcome, fleet))
                    rows.append(AcceptedRow(outcome.device.device_id, outcome.boot, outcome.seq, now,
                                            outcome.cose, outcome.gap, outcome.report_hash))
                    self.pending_state[outcome.device.device_id] = DeviceState(
                        outcome.boot, outcome.seq, outcome.report_hash)
                    self.pending_seen[(outcome.device.device_id, outcome.boot, outcome.seq)] = outcome.cose
                elif isinstance(outcome, Duplicate):
                    dupes += 1
                elif outcome is not None:
                    rejected.append(RejectedRow(now, msg.topic[:200], outcome.device_id, outcome.reason,
                                                outcome.detail[:500], bytes(msg.payload[:2048])))
                    digests.append(hashlib.sha256(msg.payload).hexdigest())
            self.store.commit_outcomes(rows, rejected)
            crash_point("ingest-committed")
            self.states.update(self.pending_state)
        finally:
            self.pending_state.clear()
            self.pending_seen.clear()
        if self.commit_failing:
            log.info("store writable again; resumed acknowledging")
            self.commit_failing = False
        for msg in group:
            self.client.ack(msg.mid, msg.qos)
        rotation.note_announcements(self.store, accepted)  # key rotation, protocol §3.1 (rare; cheap check)
        self.metrics.queue_depth.dec(len(group))
        self.metrics.accepted.inc(len(rows))
        self.metrics.duplicates.inc(dupes)
        for r, digest in zip(rejected, digests):
            self.metrics.rejected.labels(r.reason).inc()
            if r.reason != "rate_limited":  # a flood must not become a flood of log lines; metrics count it
                log.info("rejected %s: %s (%s)", r.device_id or r.topic, r.reason, r.detail)
            self._tell_device(r, digest)
        for acc, fleet in accepted:
            if acc.gap:
                self.metrics.gaps.inc()
                log.info("gap for %s at boot %d seq %d: %s", acc.device.device_id, acc.boot, acc.seq, acc.gap_detail)
        if self.cfg.republish and accepted:
            # One job per group: the JSON is built and published on the publisher
            # thread and connection, after the PUBACKs above have gone out.
            self.publisher.submit(lambda: _verified_messages(accepted, now))

    def _tell_device(self, r: RejectedRow, digest: str) -> None:
        """A `rejected` receipt, so the device (and `surge flash`) learns why."""
        parts = r.topic.split("/")
        if r.reason == "rate_limited" or len(parts) != 5 or parts[4] != "report" or not r.payload:
            return  # never answer floods, or topics that are not a device's report topic
        body = {"v": 1, "status": "rejected", "device": parts[3], "reason": r.reason, "detail": r.detail,
                "report_sha256": digest}
        self.publisher.publish("surge/v1/%s/%s/receipt" % (parts[2], parts[3]),
                               json.dumps(body, separators=(",", ":")).encode())

    def _verify_one(self, msg: mqtt.MQTTMessage, now: float) -> tuple[Outcome | None, str]:
        parsed = parse_topic(msg.topic)
        if isinstance(parsed, Rejection):
            return parsed, ""
        fleet, device_id, kind = parsed
        if not self.limiter.allow(device_id, now):
            return Rejection("rate_limited", "more than %.1f messages/s (burst %d)"
                             % (self.cfg.rate_limit_per_s, self.cfg.rate_burst), device_id), fleet
        data = bytes(msg.payload)
        if kind == "birth":
            self._birth(device_id, data)
            return None, fleet
        if kind != "report":
            return Rejection("bad_topic", "unexpected topic kind %r" % kind, device_id), fleet
        outcome = self.verifier.verify(device_id, data, now)
        if isinstance(outcome, Accepted) and outcome.device.fleet != fleet:
            return Rejection("unknown_device", "device %s is enrolled in fleet %s, not %s"
                             % (device_id, outcome.device.fleet, fleet), device_id), fleet
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


