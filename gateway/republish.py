"""Everything the gateway publishes, and the `verified` JSON for integrators.

Performance (docs/performance.md): the gateway's outgoing messages (`verified`
on accept, `receipt` and `verified`-with-batch on confirmation, rejected
receipts, batch events) go out through a :class:`Publisher`: its own MQTT
connection (gateway/mqtt_client.py) and its own thread, which builds payloads
from queued jobs and writes them to the socket in bulk.  Every publish is
QoS 1 (docs/protocol.md §2.1), in the order it was queued; messages the
broker has not acknowledged are sent again after a reconnect.

The ingest process only stores; :class:`Tail` follows the reports and
rejections tables and queues the `verified` messages and `rejected` receipts.
Its cursors move (in the database) only once the broker has acknowledged
what came before them, so a crash sends some messages twice, never none.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
from json.encoder import encode_basestring_ascii as _jstr
from typing import Any, Callable, Iterable, Iterator, Mapping, Union

from surge_protocol import claims as C
from gateway.config import GatewayConfig
from gateway.mqtt_client import Connection, MQTTError, backoff_delays
from gateway.attest import attested_json, claims_of
from gateway.receipts import anchor_fields
from gateway.store import Anchor, Batch, RejectedRow, Store, StoredReport
from surge_protocol import topics

log = logging.getLogger("surge.gateway.publisher")

SESSION_EXPIRY_S = 7 * 86400
# A job is one message, or a callable that builds many on the publisher thread.
Job = Union[tuple[str, bytes], Callable[[], Iterable[tuple[str, bytes]]]]
_STOP = object()


class _AfterSent:
    """A job that runs ``fn`` once every message queued before it is acknowledged."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn


# Performance (docs/performance.md): every accepted report becomes two
# `verified` messages, so the JSON is written directly rather than through a
# dict of named claims and json.dumps (twice as fast, bench group 2); the output is
# byte-for-byte what ``json.dumps(..., separators=(",", ":"))`` gives, which
# tests/test_verified_json.py checks on generated claims.
_HEAD = '{"v":1,"device":%s,"fleet":%s,"board":%s,"boot":%d,"seq":%d,"received_at":%d,"gap":%s,"claims":'


def verified_body(
    device_id: str,
    fleet: str,
    board: str,
    boot: int,
    seq: int,
    received_at: float,
    gap: bool,
    claims: Mapping[Any, Any] | str,
    cose: bytes,
    batch: str | None,
    attested: str | None = None,
) -> bytes:
    """The integrator-facing JSON of one accepted report (docs/protocol.md §2.5).

    ``claims``: the report's claims, or their JSON text (``claims_json``) when already made.
    ``batch`` is None before anchoring, else the batch object as JSON text
    (one batch's messages share all of it but the leaf index).  ``attested``:
    the gateway's attested object as JSON text (gateway/attest.py), or None
    when this report has none (the member is then left out, as before).
    """
    return "".join(
        (
            _HEAD
            % (
                _jstr(device_id),
                _jstr(fleet),
                _jstr(board),
                boot,
                seq,
                round(received_at * 1000),
                "true" if gap else "false",
            ),
            claims if isinstance(claims, str) else claims_json(claims),
            ',"report":"',
            cose.hex(),
            '"',
            ',"attested":' + attested if attested else "",
            ',"batch":',
            batch or "null",
            "}",
        )
    ).encode()


def claims_json(claims: Mapping[Any, Any]) -> str:
    """``json.dumps(C.named(claims))``, compact, without building the named dict."""
    parts = []
    for k, v in claims.items():
        if k == C.SURGE and type(v) is dict:
            for sk, sv in v.items():
                head = _SURGE_HEADS.get(sk)
                if head is None:
                    return _named_json(claims)
                parts.append(head + (int.__repr__(sv) if type(sv) is int else _value(sv)))
        else:
            head = _CLAIM_HEADS.get(k)
            if head is None:
                return _named_json(claims)
            parts.append(head + (int.__repr__(v) if type(v) is int else _value(v)))
    return "{" + ",".join(parts) + "}"


_CLAIM_HEADS = {k: '"%s":' % name for k, name in C.NAMES.items()}
_SURGE_HEADS = {k: '"%s":' % name for k, name in C.SURGE_NAMES.items()}


def _named_json(claims: Mapping[Any, Any]) -> str:
    # Unregistered keys may share a name (5 and "5" both give "claim_5"): then
    # named() keeps one, and so must the JSON. Rare; the plain way.
    return json.dumps(C.named(claims), separators=(",", ":"))


def _value(v: Any) -> str:
    t = type(v)
    if t is int:
        return int.__repr__(v)
    if t is bytes:
        return '"%s"' % v.hex()
    if t is str:
        return _jstr(v)
    if t is bool:
        return "true" if v else "false"
    if t is dict:
        return "{" + ",".join(_jstr(str(k)) + ":" + _value(x) for k, x in v.items()) + "}"
    if t is list:
        return "[" + ",".join(_value(x) for x in v) + "]"
    # Nothing else passes verification (protocol §4.4); should it ever, the
    # message still goes out rather than failing the publisher's job.
    return json.dumps(v, separators=(",", ":"), default=str)


class ClaimsText:
    """Report id -> its claims as `verified` JSON text: decoded once for the three places that read them.

    The attestation stage decodes every report's claims anyway and puts the
    text here; the first `verified` message and the anchored copy take it
    instead of decoding the stored COSE again (each decode was ~3% of the
    pipeline's CPU under load, docs/performance.md). Bounded: past ``cap``
    entries the oldest go, and a miss only means decoding again.
    """

    def __init__(self, cap: int = 65536) -> None:
        self.cap = cap
        self._texts: dict[int, str] = {}
        self._lock = threading.Lock()

    def put(self, report_id: int, claims: Mapping[Any, Any]) -> None:
        text = claims_json(claims)
        with self._lock:
            self._texts[report_id] = text
            while len(self._texts) > self.cap:
                del self._texts[next(iter(self._texts))]

    def get(self, report_id: int, cose: bytes) -> str:
        text = self._texts.get(report_id)
        return text if text is not None else claims_json(claims_of(cose))

    def take(self, report_id: int, cose: bytes) -> str:
        """``get``, and forget it: the anchored copy is the last message that needs it."""
        with self._lock:
            text = self._texts.pop(report_id, None)
        return text if text is not None else claims_json(claims_of(cose))


def republish_anchored(
    store: Store,
    batch: Batch,
    anchor: Anchor,
    publish: Callable[[str, bytes], None],
    leaves: list[StoredReport] | None = None,
    texts: ClaimsText | None = None,
) -> None:
    """Each report of a confirmed batch again on its verified topic, now with ``batch`` filled in."""
    info = {
        "status": "confirmed",
        "batch_seq": batch.seq,
        "tree_size": batch.size,
        "root": batch.root.hex(),
        "gateway_id": batch.gateway_id,
        **anchor_fields(anchor),
    }
    # The batch object of every message: this, then the leaf index last.
    info_head = json.dumps(info, separators=(",", ":"))[:-1] + ',"leaf_index":'
    devices = store.batch_devices(batch.seq)  # one query, not one per leaf
    if leaves is None:
        leaves = store.batch_leaves(batch.seq)
    attested = attested_json(store, [rep.id for rep in leaves])
    texts = texts or ClaimsText(0)
    for rep in leaves:
        dev = devices.get(rep.device_id)
        if dev is None or rep.leaf_index is None:  # every leaf of a closed batch has its index
            continue
        fleet, board = dev
        # gap is reported on the first `verified` message only, as before.
        publish(
            topics.topic(fleet, rep.device_id, "verified"),
            verified_body(
                rep.device_id,
                fleet,
                board,
                rep.boot,
                rep.seq,
                rep.received_at,
                False,
                texts.take(rep.id, rep.cose),
                rep.cose,
                "%s%d}" % (info_head, rep.leaf_index),
                attested.get(rep.id),
            ),
        )


class Publisher:
    """Outgoing QoS 1 messages on a connection and a thread of their own, in queue order."""

    def __init__(self, cfg: GatewayConfig, gateway_id: str) -> None:
        self.jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="surge-publish", daemon=True)
        self.started = False
        self.stopping = threading.Event()
        host, port, tls = cfg.broker_host_port()
        self.host, self.port = host, port
        v5 = cfg.mqtt_version == "5"
        # A client id of its own (the broker would otherwise drop the ingest
        # connection as a duplicate); same credentials, so the same ACL applies.
        # Persistent session, so what the broker acknowledged is not asked again.
        self.conn = Connection(
            host,
            port,
            cfg.client_id(gateway_id, "pub"),
            version=cfg.mqtt_version,
            username=cfg.username,
            password=cfg.password,
            tls=tls,
            ca_file=cfg.broker_ca,
            keepalive=30,
            clean_start=False,
            session_expiry=SESSION_EXPIRY_S if v5 else 0,
        )
        # Built messages and after-sent markers, oldest first; survives reconnects.
        self.pending: collections.deque[Any] = collections.deque()

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        self.thread.start()

    def publish(self, topic: str, payload: bytes) -> None:
        """Queue one QoS 1 message; returns at once."""
        self.jobs.put((topic, payload))

    def submit(self, build: Callable[[], Iterable[tuple[str, bytes]]]) -> None:
        """Queue messages whose payloads are built later, on the publisher thread."""
        self.jobs.put(build)

    def after_sent(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (on the publisher thread) when everything queued so far has its PUBACK."""
        self.jobs.put(_AfterSent(fn))

    def _take_jobs(self, wait: float) -> bool:
        """Move queued jobs into ``pending`` (building payloads); False once told to stop."""
        try:
            job = self.jobs.get(timeout=wait) if wait > 0 else self.jobs.get_nowait()
        except queue.Empty:
            return True
        while True:
            if job is _STOP:
                return False
            if isinstance(job, (tuple, _AfterSent)):
                self.pending.append(job)
            else:
                try:
                    self.pending.extend(job())
                except Exception:  # a bad job must not stop the publisher
                    log.exception("publisher job failed")
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return True

    def _flush(self) -> None:
        """Hand pending messages to the connection up to the next marker; run markers when due."""
        conn = self.conn
        while self.pending:
            if isinstance(self.pending[0], _AfterSent):
                # Messages go out in order: none unacknowledged means all before it are.
                if conn.unacked():
                    return
                self.pending.popleft().fn()
                continue
            conn.publish(self._take_messages(1000))

    def _take_messages(self, limit: int) -> Iterator[tuple[str, bytes, bool]]:
        # Lazily: a message leaves ``pending`` only when the connection takes it
        # (and keeps it until its PUBACK), so a connection lost midway loses none.
        for _ in range(limit):
            if not self.pending or isinstance(self.pending[0], _AfterSent):
                return
            topic, payload = self.pending.popleft()
            yield topic, payload, False

    def _run(self) -> None:
        delays: Iterator[float] | None = None
        running = True
        while True:
            try:
                self.conn.connect()
                self.conn.resend_unacked()
                delays = None
                # After _STOP: what is queued still goes out, until stop() gives up waiting.
                while running or ((self.pending or self.conn.unacked()) and not self.stopping.is_set()):
                    if running:
                        running = self._take_jobs(0.0 if self.pending else 0.2)
                    self._flush()
                    self.conn.poll(0.0 if self.pending else 0.05)
                self.conn.disconnect()
                return
            except (MQTTError, OSError) as exc:
                self.conn.close()
                if self.stopping.is_set():
                    return
                if delays is None:
                    log.warning(
                        "publisher lost the broker at %s:%d (%s); %d messages wait, reconnecting",
                        self.host,
                        self.port,
                        exc,
                        self.conn.unacked() + len(self.pending),
                    )
                    delays = backoff_delays(1, 30)
                self.stopping.wait(next(delays))

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued (waiting at most ``timeout`` for acknowledgements), then disconnect."""
        if not self.started:
            return
        self.jobs.put(_STOP)
        self.thread.join(timeout)
        self.stopping.set()
        self.thread.join(5)


def rejected_receipt(r: RejectedRow) -> tuple[str, bytes] | None:
    """A `rejected` receipt, so the device (and `surge flash`) learns why; None where none is due."""
    parts = r.topic.split("/")
    if r.reason == "rate_limited" or len(parts) != 5 or parts[4] != "report" or not r.payload:
        return None  # never answer floods, or topics that are not a device's report topic
    body = {
        "v": 1,
        "status": "rejected",
        "device": parts[3],
        "reason": r.reason,
        "detail": r.detail,
        "report_sha256": r.payload_sha256,
    }
    return topics.topic(parts[2], parts[3], "receipt"), json.dumps(body, separators=(",", ":")).encode()


class Tail:
    """Follows the reports and rejections the ingest process stores, and publishes them."""

    CHUNK = 2000

    def __init__(
        self,
        store: Store,
        publisher: Publisher,
        republish: bool,
        attested_up_to: Callable[[], int] | None = None,
        texts: ClaimsText | None = None,
    ) -> None:
        self.store = store
        self.texts = texts or ClaimsText(0)
        self.publisher = publisher
        self.republish = republish
        # A report's `verified` message waits for its attestation (gateway/attest.py):
        # only reports up to this row id go out.
        self.attested_up_to = attested_up_to
        # Cursors start at the present the first time (history is not replayed).
        reports, rejections = store.max_ids()
        self.reports = int(store.meta("cursor:verified") or reports)
        self.rejections = int(store.meta("cursor:rejected") or rejections)
        store.set_meta("cursor:verified", str(self.reports))
        store.set_meta("cursor:rejected", str(self.rejections))
        self.acked: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()

    def step(self) -> int:
        """Queue everything stored since the last step; returns how many messages."""
        queued = 0
        while self.republish:
            rows = self.store.reports_after(self.reports, self.CHUNK)
            if self.attested_up_to is not None:
                limit = self.attested_up_to()
                rows = [r for r in rows if r[0] <= limit]
            if not rows:
                break
            attested = attested_json(self.store, [r[0] for r in rows])
            texts = self.texts
            self.publisher.submit(
                lambda rows=rows, attested=attested: [  # type: ignore[misc]
                    (
                        topics.topic(fleet, device, "verified"),
                        verified_body(
                            device,
                            fleet,
                            board,
                            boot,
                            seq,
                            at,
                            bool(gap),
                            texts.get(rid, cose),
                            cose,
                            None,
                            attested.get(rid),
                        ),
                    )
                    for rid, device, fleet, board, boot, seq, at, gap, cose in rows
                ]
            )
            self.reports = rows[-1][0]
            self._advance("cursor:verified", self.reports)
            queued += len(rows)
        while True:
            rej = self.store.rejections_after(self.rejections, self.CHUNK)
            if not rej:
                break
            for _, r in rej:
                msg = rejected_receipt(r)
                if msg is not None:
                    self.publisher.publish(*msg)
                    queued += 1
            self.rejections = rej[-1][0]
            self._advance("cursor:rejected", self.rejections)
        while not self.acked.empty():
            key, value = self.acked.get()
            self.store.set_meta(key, str(value))
        return queued

    def _advance(self, key: str, value: int) -> None:
        self.publisher.after_sent(lambda: self.acked.put((key, value)))
