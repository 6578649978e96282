"""Reports from a RabbitMQ quorum queue instead of an MQTT subscription (``--source amqp://...``).

Devices publish plain MQTT to any node of a RabbitMQ cluster (the MQTT
plugin).  The plugin routes every message to ``amq.topic`` with '/' in the
topic turned into '.' (a '.' inside a level stays '.'), and sends the device's QoS 1 PUBACK only once the queues
it routes to have confirmed it; ``surge.reports`` is a quorum queue on every
node, which confirms once a majority of them has it on disk.  So a PUBACK to a
device means the report survives any one node (docs/cluster.md shows the kill
test), and reports published while no gateway runs wait in the queue.

Gateways are competing consumers of that queue with manual acknowledgements:
the ingest loop (gateway/ingest.py) commits a group's outcomes first and only
then acknowledges the group, exactly as on the MQTT path.  A gateway that dies
before its ack leaves the messages unacknowledged; RabbitMQ delivers them again
(to it or another gateway), and the store's (device, boot, seq) dedup turns the
second copy into a duplicate, acknowledged without a second acceptance.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import pika
import pika.exceptions

from gateway.mqtt_client import Incoming

log = logging.getLogger("surge.gateway.source")

REPORTS_QUEUE = "surge.reports"
# MQTT topic surge/v1/<fleet>/<device>/<kind> reaches amq.topic as surge.v1.<fleet>.<device>.<kind>.
# '#', not '*.*': a topic with a '.' inside a level has more words, and a message that
# routes nowhere is confirmed (PUBACKed) and dropped; bound this way it reaches the
# gateway, which rejects it as bad_topic, counted and visible.
REPORT_BINDINGS = ("surge.v1.#.report", "surge.v1.#.birth")
QUORUM_SIZE = 3


class SourceError(OSError):
    """The report queue cannot be reached or was lost; the message says which node and why."""


def parse_source(value: str) -> list[str]:
    """The AMQP URLs of ``amqp://host:port/[,amqp://host:port/...]``; ValueError naming what is wrong."""
    urls = [u.strip() for u in value.split(",") if u.strip()]
    if not urls:
        raise ValueError("source: no URL given (expected amqp://host:port/, several separated by commas)")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            raise ValueError("source: %r is not an amqp:// or amqps:// URL of a RabbitMQ node" % url)
        if not parts.hostname:
            raise ValueError("source: no host in %r" % url)
        try:
            parts.port
        except ValueError:
            raise ValueError("source: bad port in %r" % url) from None
    return urls


def declare_reports_queue(channel: Any, quorum_size: int = QUORUM_SIZE) -> None:
    """The replicated reports queue and its bindings; idempotent (same arguments every time)."""
    channel.queue_declare(
        REPORTS_QUEUE, durable=True, arguments={"x-queue-type": "quorum", "x-quorum-initial-group-size": quorum_size}
    )
    for key in REPORT_BINDINGS:
        channel.queue_bind(REPORTS_QUEUE, "amq.topic", routing_key=key)


def topic_of(routing_key: str) -> str:
    """The MQTT topic of a routing key, as the MQTT plugin maps it back ('.' to '/').

    A '.' the device put inside a level comes back as a level of its own, so
    such a topic fails parse_topic (bad_topic) instead of passing as another one.
    """
    return routing_key.replace(".", "/")


class AmqpSource:
    """One consuming connection to the first reachable node of ``urls``; poll()/ack() like ``Connection``."""

    def __init__(self, urls: list[str], prefetch: int, quorum_size: int = QUORUM_SIZE) -> None:
        self.urls = urls
        self.prefetch = prefetch
        self.quorum_size = quorum_size
        self.conn: Any = None
        self.channel: Any = None
        self.node = ""
        self._got: list[Incoming] = []

    def connect(self) -> None:
        params = []
        for url in self.urls:
            p = pika.URLParameters(url)
            p.connection_attempts = 1
            p.socket_timeout = 5
            p.heartbeat = 30
            params.append(p)
        try:
            self.conn = pika.BlockingConnection(params)  # the first node that answers
            self.channel = self.conn.channel()
            declare_reports_queue(self.channel, self.quorum_size)
            # Bounds what is delivered before we acknowledge: backpressure when commits stall.
            self.channel.basic_qos(prefetch_count=self.prefetch)
            self.channel.basic_consume(REPORTS_QUEUE, self._on_message, auto_ack=False)
        except pika.exceptions.AMQPError as exc:
            self.close()
            raise SourceError(
                "cannot consume %s from %s: %s" % (REPORTS_QUEUE, ", ".join(self.urls), _why(exc))
            ) from None
        # Which node answered, for the log (pika keeps it on the connection it wraps).
        used: Any = getattr(getattr(self.conn, "_impl", None), "params", None)
        self.node = "%s:%s" % (used.host, used.port) if used is not None else ", ".join(self.urls)

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._got.append(
            Incoming(topic_of(method.routing_key), body, 1, False, bool(method.redelivered), int(method.delivery_tag))
        )

    def poll(self, timeout: float) -> list[Incoming]:
        """What arrived within ``timeout`` s (packet_id is the delivery tag)."""
        try:
            if not self._got:
                self.conn.process_data_events(time_limit=timeout)
        except pika.exceptions.AMQPError as exc:
            raise SourceError("lost the report queue at %s: %s" % (self.node, _why(exc))) from None
        got, self._got = self._got, []
        return got

    def ack(self, tags: list[int]) -> None:
        """Acknowledge a committed group. Groups go in delivery order, so the last tag covers the group."""
        if not tags:
            return
        try:
            self.channel.basic_ack(delivery_tag=max(tags), multiple=True)
        except pika.exceptions.AMQPError as exc:
            # Not acknowledged: RabbitMQ delivers them again, dedup makes them duplicates.
            raise SourceError("lost the report queue at %s before acknowledging: %s" % (self.node, _why(exc))) from None

    def close(self) -> None:
        conn, self.conn, self.channel = self.conn, None, None
        self._got = []
        if conn is not None:
            try:
                conn.close()
            except pika.exceptions.AMQPError:
                pass


def _why(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return "%s (%s)" % (type(exc).__name__, text) if text != type(exc).__name__ else text
