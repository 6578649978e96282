"""A lean, blocking MQTT 5 / 3.1.1 client connection owned by one thread.

Why this exists: paho-mqtt spends ~110 µs per received QoS 1 message (receive
plus manual PUBACK) and ~260 µs per QoS 1 publish with its PUBACK: one socket
read per packet, a lock and a Condition per message, callbacks, message
objects.  The gateway's whole budget is ~100 µs per report.  ``Connection``
instead works in bulk: ``poll()`` reads everything the kernel holds in one
``recv()`` and decodes every complete packet out of it (gateway/mqtt_codec.py);
``ack()`` sends all the PUBACKs of a group in one write; ``publish()`` encodes
many messages into one large write, waiting for PUBACKs only when the in-flight
window (ours, or the broker's Receive Maximum) is full.  No threads, locks or
callbacks: the one thread that owns the connection calls it in turn.

Delivery model:

* Incoming QoS 1 messages are acknowledged only when the caller calls
  ``ack()``, so a persistent session (``clean_start=False`` plus, on MQTT 5, a
  ``session_expiry``) makes the broker redeliver what was never acknowledged.
* Outgoing QoS 1 publishes stay "unacked" until their PUBACK.  After a lost
  connection, ``connect()`` again on the same object and ``resend_unacked()``
  (``publish()`` and ``wait_acked()`` do it first if the caller did not): they
  go again with DUP=1, the same packet ids, in their original order.
  Delivery is at least once.

Limitations: QoS 2 is not supported (publish and subscribe with QoS 0 or 1;
a QoS 2 packet from the broker is a ``ProtocolError``); no UNSUBSCRIBE, no
enhanced authentication, no topic aliases, no v5 properties on PUBLISH; one
thread only (nothing here is thread-safe, on purpose).
"""

from __future__ import annotations

import math
import random
import select
import socket
import ssl
import time
from typing import Iterable, Iterator

from gateway.mqtt_codec import (
    CONNACK,
    DISCONNECT,
    SUBACK,
    ConnAck,
    Decoder,
    Disconnect,
    MQTTError,
    Packet,
    PingResp,
    ProtocolError,
    PubAck,
    Publish,
    SubAck,
    Will,
    encode_connect,
    encode_disconnect,
    encode_pingreq,
    encode_publish,
    encode_pubacks,
    encode_subscribe,
    reason_text,
)
from gateway.mqtt_session import OutboundSession

__all__ = [
    "Connection",
    "Incoming",
    "Will",
    "MQTTError",
    "Refused",
    "ConnectionLost",
    "ProtocolError",
    "backoff_delays",
]

Incoming = Publish
"""A received PUBLISH: ``topic``, ``payload`` (bytes), ``qos``, ``packet_id`` (0 for QoS 0), ``retain``, ``dup``."""

_READ_BUFFER = 1 << 20  # one poll() reads at most this much; the rest comes next time
_WRITE_CHUNK = 256 << 10  # publish()/resend_unacked() write this much at a time
_PINGREQ = encode_pingreq()


class _Pending:
    """Encoded packets gathered for one large write."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, pkt: bytes) -> bool:
        """Gather ``pkt``; True once a write's worth is gathered."""
        self.parts.append(pkt)
        self.size += len(pkt)
        return self.size >= _WRITE_CHUNK

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        self.size = 0
        return data


class Refused(MQTTError):
    """The broker refused the connection (CONNACK) or a subscription (SUBACK)."""

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class ConnectionLost(MQTTError, ConnectionError):
    """No connection: it could not be made, the broker closed it or went silent.

    Also an ``OSError``, so ``except OSError`` around a reconnect loop catches it.
    Unacknowledged publishes are kept: ``connect()`` then ``resend_unacked()``.
    """


# What to do about a refusal, by v5 reason code (3.1.1 return codes are mapped
# onto these in _refusal()).
_HINTS: dict[int, str] = {
    0x84: 'the broker does not accept this MQTT version: try version="3.1.1"',
    0x85: "the broker rejected the client id: use another (letters and digits, at most 23, always work)",
    0x86: "check username/password",
    0x87: "check username/password and the broker's ACL",
    0x88: "the broker is not available: retry later",
    0x89: "the broker is busy: retry later",
    0x8A: "this client is banned by the broker's configuration",
    0x8C: "the broker wants another authentication method",
    0x8F: "check the topic filter syntax (+ and # only as whole levels, # last)",
    0x95: "a packet was larger than the broker accepts",
    0x97: "the broker's quota for this client is exhausted: retry later",
    0x9C: "the broker asks to use another server",
    0x9D: "the broker has moved",
    0x9E: "the broker does not support shared subscriptions: subscribe without $share/",
    0x9F: "the broker limits the connection rate: retry later with backoff",
    0xA2: "the broker does not support wildcard subscriptions",
}
_V311_CONNACK_AS_V5 = {1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}


def backoff_delays(min_s: float = 1.0, max_s: float = 30.0) -> Iterator[float]:
    """Endless reconnect delays: doubling from ``min_s`` up to ``max_s``, each drawn
    from [d/2, d] (never below ``min_s``) so many clients do not retry in step."""
    d = float(min_s)
    while True:
        yield max(float(min_s), random.uniform(d / 2, d))
        d = min(float(max_s), d * 2)


def _wait(sock: socket.socket, write: bool, timeout: float) -> bool:
    """Wait until ``sock`` is readable (or writable); False on timeout."""
    if timeout <= 0:
        return False
    # poll(math.inf) from a caller with keepalive 0: wait in day-long steps (the caller's loop re-waits).
    timeout = min(timeout, 86400.0)
    if hasattr(select, "poll"):
        p = select.poll()
        p.register(sock.fileno(), select.POLLOUT if write else select.POLLIN)
        # Rounded up: a sub-millisecond wait rounded down would spin.
        return bool(p.poll(math.ceil(timeout * 1000)))
    r, w, _ = select.select([] if write else [sock], [sock] if write else [], [], timeout)
    return bool(r or w)


class Connection:
    """One MQTT connection, used by one thread.  See the module docstring.

    ``client_id`` "" lets a v5 broker assign one (``client_id`` then holds it).
    ``tls`` or ``ca_file`` turns TLS on, verifying the broker against the system
    trust store or that CA file.  ``keepalive`` is in seconds; a v5 broker's
    Server Keep Alive overrides it.  A persistent session needs
    ``clean_start=False`` and, on MQTT 5, ``session_expiry`` > 0 (seconds).
    ``receive_maximum`` (v5) caps the unacknowledged QoS 1 messages the broker
    sends us; ``max_packet_size`` (v5) the size of any packet it sends us.
    ``will`` is published by the broker when the connection ends without
    ``disconnect()``.  ``max_inflight`` caps our unacked QoS 1 publishes (the
    broker's Receive Maximum may lower it: ``send_window``).  ``ack_timeout`` is
    how long ``publish()`` waits for a PUBACK with the window full, and how long
    one write may block, before the connection counts as lost.
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        version: str = "5",
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        ca_file: str | None = None,
        keepalive: int = 30,
        clean_start: bool = False,
        session_expiry: int = 0,
        receive_maximum: int | None = None,
        max_packet_size: int | None = None,
        will: Will | None = None,
        max_inflight: int = 1000,
        ack_timeout: float = 60.0,
    ) -> None:
        if version not in ("5", "5.0", "3.1.1"):
            raise ValueError('MQTT version must be "5" or "3.1.1", not %r' % (version,))
        if will is not None and will.qos not in (0, 1):
            raise ValueError("will QoS must be 0 or 1 (QoS 2 is not supported), not %r" % (will.qos,))
        self._session = OutboundSession(max_inflight)  # validates max_inflight
        self.host = host
        self.port = port
        self.client_id = client_id
        self.v5 = version != "3.1.1"
        self.max_inflight = max_inflight
        self.ack_timeout = ack_timeout
        # Only a v5 broker learns our limit (CONNECT property); enforcing it on a
        # 3.1.1 broker would turn one large message into a reconnect loop.
        self._max_packet_size = max_packet_size if self.v5 else None
        # Built once: the same CONNECT on every reconnect (also validates arguments now,
        # not at the first connect()).
        self._connect_packet = encode_connect(
            client_id,
            v5=self.v5,
            clean_start=clean_start,
            keepalive=keepalive,
            username=username,
            password=password,
            will=will,
            session_expiry=session_expiry if self.v5 else None,
            receive_maximum=receive_maximum if self.v5 else None,
            max_packet_size=max_packet_size if self.v5 else None,
        )
        self._ssl: ssl.SSLContext | None = None
        if tls or ca_file:
            self._ssl = ssl.create_default_context(cafile=ca_file)
        self._configured_keepalive = keepalive
        self.keepalive = keepalive
        self.session_present = False
        self.connack: ConnAck | None = None
        # PUBACKs with a failure reason code (v5), latest last: (packet id, reason
        # code); they count as acknowledged (gateway/mqtt_session.py).
        self.rejected = self._session.rejected

        self._sock: socket.socket | None = None
        self._lost: str | None = None  # why the socket was dropped, raised by the next call
        self._decoder = Decoder(self.v5, self._max_packet_size)
        self._buf = bytearray(_READ_BUFFER)
        self._view = memoryview(self._buf)
        self._server_max_packet: int | None = None
        self._server_max_qos = 1
        self._pending: list[Publish] = []  # received while waiting for something else
        self._suback: SubAck | None = None
        self._last_send = 0.0
        self._last_recv = 0.0
        self._ping_sent: float | None = None

    # -- public API ----------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._sock is not None

    @property
    def send_window(self) -> int:
        """QoS 1 publishes allowed in flight: min(max_inflight, the broker's Receive Maximum)."""
        return self._session.window

    def connect(self, timeout: float = 10.0) -> bool:
        """Connect (again) and return the broker's session-present flag.

        Raises ``Refused`` when the broker says no, ``ConnectionLost`` (an
        OSError) when it cannot be reached, does not answer or TLS fails.
        Unacked publishes are kept for ``resend_unacked()``; messages received
        but not returned by ``poll()`` on the old connection are dropped (the
        broker redelivers them to a persistent session).
        """
        self._drop()
        self._lost = None
        self._pending = []
        self._decoder = Decoder(self.v5, self._max_packet_size)
        where = "%s:%d" % (self.host, self.port)
        deadline = time.monotonic() + timeout
        try:
            raw = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as exc:
            raise ConnectionLost(
                "cannot connect to the MQTT broker at %s: %s: is it running and listening "
                "there?" % (where, exc.strerror or exc)
            ) from exc
        try:
            # Writes are already batched: Nagle would only delay PUBACKs.
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock: socket.socket = raw
            if self._ssl is not None:
                try:
                    sock = self._ssl.wrap_socket(raw, server_hostname=self.host)
                except ssl.SSLCertVerificationError as exc:
                    raise ConnectionLost(
                        "TLS: the certificate of the broker at %s failed verification (%s): "
                        "pass ca_file= the CA that signed it, and connect by a name or address "
                        "the certificate lists" % (where, exc.verify_message or exc)
                    ) from exc
                except (ssl.SSLError, OSError) as exc:
                    raise ConnectionLost(
                        "TLS handshake with the broker at %s failed (%s): is that port a TLS listener?" % (where, exc)
                    ) from exc
        except BaseException:
            raw.close()
            raise
        sock.setblocking(False)
        self._sock = sock
        try:
            now = time.monotonic()
            self._last_send = self._last_recv = now
            self._ping_sent = None
            self._send(self._connect_packet, deadline - now)
            packets: list[Packet] = []
            while not packets:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConnectionLost(
                        "no CONNACK from %s within %.1f s: is it an MQTT broker, and does the "
                        "listener expect TLS%s?" % (where, timeout, "" if self._ssl else " (tls=True)")
                    )
                try:
                    data = self._read(remaining)
                    if data is not None:
                        packets = self._decode(data)
                    if not packets and self._sock is None:
                        raise ConnectionLost(self._lost or "closed")
                except ConnectionLost as exc:
                    raise ConnectionLost(
                        "the broker at %s closed the connection before CONNACK (%s): does the "
                        "listener expect TLS%s, or MQTT version %s?"
                        % (where, self._lost or exc, "" if self._ssl else " (tls=True)", "3.1.1" if self.v5 else "5")
                    ) from exc
            ack = packets[0]
            if not isinstance(ack, ConnAck):
                raise ProtocolError("expected CONNACK from %s, got %s" % (where, type(ack).__name__))
            if ack.reason_code >= 0x80 or (not self.v5 and ack.reason_code):
                raise self._refusal(ack)
        except BaseException:
            self._drop()
            raise
        self.connack = ack
        self.session_present = ack.session_present
        self._server_max_packet = ack.maximum_packet_size
        self._server_max_qos = 1 if ack.maximum_qos is None else ack.maximum_qos
        self.keepalive = self._configured_keepalive if ack.server_keep_alive is None else ack.server_keep_alive
        if ack.assigned_client_identifier:
            self.client_id = ack.assigned_client_identifier
        self._session.connected(ack.receive_maximum)
        # A persistent session's queued messages may arrive in the same read as the CONNACK.
        self._pending = self._handle(packets[1:])
        return ack.session_present

    def subscribe(self, filters: list[tuple[str, int]], timeout: float = 10.0) -> list[int]:
        """Subscribe to ``(filter, qos)`` pairs; returns the SUBACK codes (granted QoS per filter).

        Raises ``Refused`` if the broker refused any filter.
        """
        filters = list(filters)
        for f, q in filters:
            if q not in (0, 1):
                raise ValueError("subscription QoS %r for %r is not supported: use 0 or 1" % (q, f))
        self._require()
        # Packet ids are shared with publishes: take one no unacked publish holds.
        pid = self._session.next_id()
        packet = encode_subscribe(pid, filters, v5=self.v5)
        self._suback = None
        self._send(packet)
        deadline = time.monotonic() + timeout
        while self._suback is None or self._suback.packet_id != pid:
            now = time.monotonic()
            if now >= deadline:
                self._drop("no SUBACK within %.1f s" % timeout)
                raise ConnectionLost(
                    "no SUBACK from the broker at %s:%d within %.1f s: dropped the connection; "
                    "reconnect" % (self.host, self.port, timeout)
                )
            self._read_some(deadline)
        codes = self._suback.reason_codes
        self._suback = None
        if len(codes) != len(filters):
            self._drop("bad SUBACK")
            raise ProtocolError("SUBACK has %d reason codes for %d topic filters" % (len(codes), len(filters)))
        failed = [(f, c) for (f, _), c in zip(filters, codes) if c >= 0x80]
        if failed:
            code = failed[0][1]
            hint = (
                "check the broker's ACL: may this user read these topics?"
                if code in (0x80, 0x87)
                else _HINTS.get(code, "check the broker's ACL for this user and the filter syntax")
            )
            raise Refused(
                "the broker refused the subscription to %s: %s"
                % (", ".join("%r (%s)" % (f, reason_text(c, SUBACK, self.v5)) for f, c in failed), hint),
                code,
            )
        return codes

    def poll(self, timeout: float) -> list[Incoming]:
        """Wait up to ``timeout`` s for data, read all of it and return the PUBLISHes received, in order.

        PUBACKs free in-flight slots, PINGRESPs are noted, a PINGREQ goes out
        when due.  Raises ``ConnectionLost`` when the broker closed the
        connection or sent DISCONNECT (messages read before that are returned
        first, the error comes on the next call).
        """
        if self._pending:
            out = self._pending
            self._pending = []
            return out
        self._require()
        deadline = time.monotonic() + timeout
        while True:
            self.ping_if_due()
            now = time.monotonic()
            data = self._read(min(deadline, self._next_ping_check()) - now)
            if data is not None:
                return self._handle(self._decode(data))
            if time.monotonic() >= deadline:
                return []

    def ack(self, packet_ids: Iterable[int]) -> None:
        """PUBACK all of ``packet_ids`` in one write."""
        data = encode_pubacks(packet_ids)
        if data:
            self._send(data)

    def publish(self, messages: Iterable[tuple[str, bytes, bool]], qos: int = 1) -> None:
        """Publish ``(topic, payload, retain)`` messages with QoS 0 or 1, in order, in large writes.

        QoS 1 messages are unacked until their PUBACK arrives (``poll()``,
        ``wait_acked()``); while ``send_window`` of them are in flight this
        waits for PUBACKs (up to ``ack_timeout``, then ``ConnectionLost``).
        Every message taken from ``messages`` before an error is kept as
        unacked and goes again with ``resend_unacked()`` after a reconnect.
        """
        if qos not in (0, 1):
            raise ValueError("QoS %r is not supported: publish with QoS 0 or 1" % (qos,))
        if qos > self._server_max_qos:
            raise MQTTError(
                "the broker at %s:%d accepts QoS %d at most (CONNACK Maximum QoS): publish with "
                "qos=0" % (self.host, self.port, self._server_max_qos)
            )
        self._require()
        session = self._session
        if qos and session.need_resend:
            self.resend_unacked()
        v5 = self.v5
        max_packet = self._server_max_packet
        out = _Pending()
        try:
            for topic, payload, retain in messages:
                if qos:
                    pid = session.next_id()
                    pkt = encode_publish(topic, payload, 1, retain, False, pid, v5)
                    if max_packet is not None and len(pkt) > max_packet:
                        raise self._too_large(topic, len(pkt), max_packet)
                    session.track(pid, pkt)
                    if session.window_full:
                        self._send_pending(out)
                        self._await_window()
                    session.written()
                else:
                    pkt = encode_publish(topic, payload, 0, retain, False, 0, v5)
                    if max_packet is not None and len(pkt) > max_packet:
                        raise self._too_large(topic, len(pkt), max_packet)
                if out.add(pkt):
                    self._send_pending(out)
        finally:
            # What was encoded goes out even when a later message was invalid.
            if self._sock is not None:
                self._send_pending(out)

    def unacked(self) -> int:
        """QoS 1 publishes without their PUBACK yet."""
        return len(self._session.inflight)

    def wait_acked(self, timeout: float) -> bool:
        """Read until every QoS 1 publish has its PUBACK; False if ``timeout`` s passed first.

        Messages received meanwhile are kept for the next ``poll()``.
        """
        if not self._session.inflight:
            return True
        self._require()
        if self._session.need_resend:
            self.resend_unacked()
        deadline = time.monotonic() + timeout
        while self._session.inflight:
            if time.monotonic() >= deadline:
                return False
            self._read_some(deadline)
        return True

    def resend_unacked(self) -> None:
        """After a reconnect: send every unacked QoS 1 publish again (DUP=1, same packet ids, same order).

        Does nothing if there are none or they were already resent on this
        connection (MQTT allows a resend only on reconnect).
        """
        session = self._session
        if not session.need_resend:
            return
        self._require()
        out = _Pending()
        for pkt in session.resend():
            if session.window_full:
                self._send_pending(out)
                self._await_window()
            session.written()
            if out.add(pkt):
                self._send_pending(out)
        self._send_pending(out)

    def ping_if_due(self) -> None:
        """Send PINGREQ when nothing was sent for keepalive/2; ``ConnectionLost`` when the
        broker stayed silent for keepalive after one."""
        if self._sock is None or not self.keepalive:
            return
        now = time.monotonic()
        if self._ping_sent is not None:
            if now - max(self._ping_sent, self._last_recv) >= self.keepalive:
                self._drop("no PINGRESP")
                raise ConnectionLost(
                    "no PINGRESP (nor anything else) from the broker at %s:%d within the "
                    "keepalive of %d s: dropped the connection; reconnect" % (self.host, self.port, self.keepalive)
                )
        elif now - self._last_send >= self.keepalive / 2:
            self._send(_PINGREQ)
            self._ping_sent = now

    def disconnect(self) -> None:
        """Send DISCONNECT (normal: the broker discards the will) and close.

        Unacked publishes are kept, as with ``close()``.
        """
        if self._sock is None:
            return
        try:
            self._send(encode_disconnect(0, self.v5))
            # Read until the broker closes: closing with unread data makes the
            # kernel send RST, which can make the broker lose the DISCONNECT (and
            # publish the will after all).
            deadline = time.monotonic() + 2.0
            while self._sock is not None and time.monotonic() < deadline:
                self._read(deadline - time.monotonic())
        except (MQTTError, OSError):
            pass
        finally:
            self._drop()
            self._lost = None

    def close(self) -> None:
        """Drop the connection without DISCONNECT (the broker publishes the will).

        Unacked publishes are kept for ``resend_unacked()`` after ``connect()``.
        """
        self._drop()
        self._lost = None

    # -- internals -----------------------------------------------------------

    def _require(self) -> socket.socket:
        sock = self._sock
        if sock is None:
            if self._lost:
                raise ConnectionLost(
                    "lost the connection to the broker at %s:%d (%s): connect() again, then "
                    "resend_unacked()" % (self.host, self.port, self._lost)
                )
            raise ConnectionLost("not connected to the broker at %s:%d: call connect() first" % (self.host, self.port))
        return sock

    def _drop(self, why: str | None = None) -> None:
        sock = self._sock
        self._sock = None
        if why is not None:
            self._lost = why
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _next_ping_check(self) -> float:
        """When ping_if_due() next has something to do (for bounding waits)."""
        if not self.keepalive:
            return math.inf
        if self._ping_sent is not None:
            return max(self._ping_sent, self._last_recv) + self.keepalive
        return self._last_send + self.keepalive / 2

    def _send_pending(self, out: _Pending) -> None:
        if out.parts:
            self._send(out.take())

    def _send(self, data: bytes, timeout: float | None = None) -> None:
        sock = self._require()
        view = memoryview(data)
        total = len(data)
        off = 0
        deadline = 0.0
        limit = self.ack_timeout if timeout is None else timeout
        while off < total:
            try:
                off += sock.send(view[off:])
                continue
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError) as exc:
                # The socket buffer is full: the broker reads slower than we write.
                now = time.monotonic()
                if not deadline:
                    deadline = now + limit
                if now >= deadline:
                    self._drop("write timed out")
                    raise ConnectionLost(
                        "could not write to the broker at %s:%d for %.1f s (it stopped "
                        "reading): dropped the connection; reconnect" % (self.host, self.port, limit)
                    ) from None
                _wait(sock, not isinstance(exc, ssl.SSLWantReadError), deadline - now)
            except OSError as exc:
                self._drop("write failed: %s" % exc)
                raise ConnectionLost(
                    "lost the connection to the broker at %s:%d while writing (%s): "
                    "reconnect" % (self.host, self.port, exc)
                ) from exc
        self._last_send = time.monotonic()

    def _read(self, timeout: float) -> bytes | None:
        """Everything readable now (waiting up to ``timeout`` for the first byte), or None.

        EOF or an error after some data was read is remembered: the data is
        returned, the socket dropped and the next call raises.
        """
        sock = self._require()
        view = self._view
        try:
            n = sock.recv_into(view)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            if not _wait(sock, False, timeout):
                return None
            try:
                n = sock.recv_into(view)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return None  # e.g. only part of a TLS record so far
            except OSError as exc:
                raise self._read_error(exc) from exc
        except OSError as exc:
            raise self._read_error(exc) from exc
        if not n:
            self._drop("the broker closed the connection")
            raise ConnectionLost(
                "the broker at %s:%d closed the connection: reconnect (connect(), then "
                "resend_unacked())" % (self.host, self.port)
            )
        total = n
        if self._ssl is not None:
            # TLS hands out one record (<= 16 KiB) per read: keep reading what has arrived.
            size = len(view)
            while total < size:
                try:
                    n = sock.recv_into(view[total:])
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                except OSError as exc:
                    self._drop("read failed: %s" % exc)
                    break
                if not n:
                    self._drop("the broker closed the connection")
                    break
                total += n
        self._last_recv = time.monotonic()
        return bytes(view[:total])

    def _read_error(self, exc: OSError) -> ConnectionLost:
        self._drop("read failed: %s" % exc)
        return ConnectionLost(
            "lost the connection to the broker at %s:%d (%s): reconnect (connect(), then "
            "resend_unacked())" % (self.host, self.port, exc)
        )

    def _decode(self, data: bytes) -> list[Packet]:
        try:
            return self._decoder.feed(data)
        except ProtocolError as exc:
            self._drop("protocol error: %s" % exc)
            raise ProtocolError(
                "the broker at %s:%d sent invalid MQTT: %s: dropped the connection; "
                "reconnect" % (self.host, self.port, exc)
            ) from None

    def _handle(self, packets: list[Packet]) -> list[Publish]:
        """Apply acknowledgements and pings; return the PUBLISHes."""
        out: list[Publish] = []
        session = self._session
        for p in packets:
            if isinstance(p, Publish):
                out.append(p)
            elif isinstance(p, PubAck):
                session.acked(p.packet_id, p.reason_code)
            elif isinstance(p, PingResp):
                self._ping_sent = None
            elif isinstance(p, SubAck):
                self._suback = p
            elif isinstance(p, Disconnect):
                text = reason_text(p.reason_code, DISCONNECT, self.v5)
                if p.reason_string:
                    text += ": " + p.reason_string
                if p.reason_code == 0x8E:
                    text += " (another client connected with the same client id)"
                self._drop("the broker sent DISCONNECT: %s" % text)
                break
            else:
                name = type(p).__name__
                self._drop("unexpected %s" % name)
                raise ProtocolError(
                    "unexpected %s from the broker at %s:%d after the connection was "
                    "established: dropped the connection" % (name, self.host, self.port)
                )
        return out

    def _read_some(self, deadline: float) -> None:
        """One read (up to ``deadline``) while waiting for acknowledgements; keeps PUBLISHes for poll()."""
        self._require()
        self.ping_if_due()
        now = time.monotonic()
        data = self._read(min(deadline, self._next_ping_check()) - now)
        if data is not None:
            self._pending.extend(self._handle(self._decode(data)))

    def _await_window(self) -> None:
        """Read until a QoS 1 in-flight slot is free."""
        deadline = time.monotonic() + self.ack_timeout
        while self._session.window_full:
            if time.monotonic() >= deadline:
                self._drop("no PUBACK for %.0f s" % self.ack_timeout)
                raise ConnectionLost(
                    "no PUBACK from the broker at %s:%d for %.0f s while %d publishes were in "
                    "flight: dropped the connection; reconnect and resend_unacked()"
                    % (self.host, self.port, self.ack_timeout, self._session.outstanding)
                )
            self._read_some(deadline)

    def _refusal(self, ack: ConnAck) -> Refused:
        code = ack.reason_code
        text = reason_text(code, CONNACK, self.v5)
        if ack.reason_string:
            text += ": " + ack.reason_string
        hint = _HINTS.get(code if self.v5 else _V311_CONNACK_AS_V5.get(code, 0x80), "")
        return Refused(
            "the broker at %s:%d refused the connection: %s%s"
            % (self.host, self.port, text, ": " + hint if hint else ""),
            code,
        )

    def _too_large(self, topic: str, size: int, limit: int) -> MQTTError:
        return MQTTError(
            "PUBLISH to %r is %d bytes, more than the broker's maximum packet size of %d bytes: "
            "send a smaller payload" % (topic, size, limit)
        )
