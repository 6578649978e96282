"""Everything the gateway publishes, and the `verified` JSON for integrators.

Performance (docs/performance.md): the gateway's outgoing messages (`verified`
on accept, `receipt` and `verified`-with-batch on confirmation, rejected
receipts, batch events) go out through a :class:`Publisher`: its own MQTT
connection, its own paho network thread, and a thread that turns queued jobs
into payloads.  The ingest connection then carries only incoming reports and
their PUBACKs, so an acknowledgement never waits behind thousands of outgoing
QoS 1 messages, and the ingest worker never builds JSON.  Every publish is
still QoS 1 (docs/protocol.md §2.1), in the order it was queued.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Union

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import claims as C
from gateway.config import GatewayConfig
from gateway.receipts import anchor_fields
from gateway.store import Anchor, Batch, Store

log = logging.getLogger("surge.gateway.publisher")

SESSION_EXPIRY_S = 7 * 86400
# A job is one message, or a callable that builds many on the publisher thread.
Job = Union[tuple[str, bytes], Callable[[], Iterable[tuple[str, bytes]]]]
_STOP = object()


class _AfterSent:
    """A job that runs ``fn`` once every message queued before it is acknowledged."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn


def verified_body(device_id: str, fleet: str, board: str, boot: int, seq: int, received_at: float, gap: bool,
                  claims: Mapping[Any, Any], cose: bytes, batch: dict[str, Any] | None) -> bytes:
    """The integrator-facing JSON of one accepted report (docs/protocol.md §2.5)."""
    return json.dumps({
        "v": 1, "device": device_id, "fleet": fleet, "board": board,
        "boot": boot, "seq": seq, "received_at": round(received_at * 1000), "gap": gap,
        "claims": C.named(claims), "report": cose.hex(), "batch": batch,
    }, separators=(",", ":")).encode()


def _stored_claims(cose: bytes) -> dict[Any, Any]:
    """Claims of a report the gateway verified and stored: plain decoding, no re-verification.

    The bytes were checked in full (structure, determinism, signature) before
    they were stored; checking them again per confirmation cost ~30 us each.
    """
    return dict(cbor2.loads(cbor2.loads(cose).value[2]))


def republish_anchored(store: Store, batch: Batch, anchor: Anchor, publish: Callable[[str, bytes], None]) -> None:
    """Each report of a confirmed batch again on its verified topic, now with ``batch`` filled in."""
    info = {"status": "confirmed", "batch_seq": batch.seq, "tree_size": batch.size, "root": batch.root.hex(),
            "gateway_id": batch.gateway_id, **anchor_fields(anchor)}
    devices = store.batch_devices(batch.seq)  # one query, not one per leaf
    for rep in store.batch_leaves(batch.seq):
        dev = devices.get(rep.device_id)
        if dev is None:
            continue
        fleet, board = dev
        # gap is reported on the first `verified` message only, as before.
        publish("surge/v1/%s/%s/verified" % (fleet, rep.device_id),
                verified_body(rep.device_id, fleet, board, rep.boot, rep.seq, rep.received_at, False,
                              _stored_claims(rep.cose), rep.cose, dict(info, leaf_index=rep.leaf_index)))


class Publisher:
    """Outgoing QoS 1 messages on a connection and threads of their own, in queue order."""

    def __init__(self, cfg: GatewayConfig, gateway_id: str) -> None:
        self.jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="surge-publish", daemon=True)
        self.started = False
        self.last: mqtt.MQTTMessageInfo | None = None
        host, port, tls = cfg.broker_host_port()
        self.host, self.port = host, port
        # A client id of its own (the broker would otherwise drop the ingest
        # connection as a duplicate); same credentials, so the same ACL applies.
        self.v5 = cfg.mqtt_version == "5"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="surge-gw-%s-pub" % gateway_id,
                                  protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
                                  clean_session=None if self.v5 else False)
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password)
        if tls:
            self.client.tls_set(ca_certs=cfg.broker_ca)
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(1000)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            log.error("broker refused the publisher connection: %s", rc)

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        if self.v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            # Persistent session: QoS 1 messages unacknowledged when the broker goes
            # away are sent again after the reconnect (paho keeps them in memory).
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            self.client.connect_async(self.host, self.port, keepalive=30, clean_start=False, properties=props)
        else:  # MQTT 3.1.1 (config mqtt_version): the same through clean_session=False
            self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
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

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is _STOP:
                return
            if isinstance(job, _AfterSent):
                # Messages go out in order, so the last one acknowledged means all are.
                while self.last is not None and not self.last.is_published():
                    time.sleep(0.01)
                job.fn()
                continue
            try:
                messages = [job] if isinstance(job, tuple) else job()
                for topic, payload in messages:
                    self.last = self.client.publish(topic, payload, qos=1)
            except Exception:  # a bad job must not stop the publisher
                log.exception("publisher job failed")

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued (waiting at most ``timeout`` for acknowledgements), then disconnect."""
        if not self.started:
            return
        self.jobs.put(_STOP)
        self.thread.join(timeout)
        if self.last is not None:
            deadline = time.monotonic() + timeout
            while not self.last.is_published() and time.monotonic() < deadline:
                time.sleep(0.02)
        self.client.disconnect()
        self.client.loop_stop()
