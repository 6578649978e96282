"""MQTT 5 and 3.1.1 packets as bytes, with no I/O (sans-I/O codec).

Why this exists: paho-mqtt costs the gateway ~110 µs per received QoS 1
message and ~260 µs per QoS 1 publish, mostly in per-packet Python machinery
(locks, Conditions, callbacks, one socket read per packet).  The gateway's
budget is ~100 µs per report end to end.  This codec lets gateway/mqtt_client.py
decode every complete packet out of one large ``recv()`` and build many
PUBLISH/PUBACK packets for one ``sendall()``.

What it covers is what the gateway needs as a client:

* encoders: CONNECT (v5 properties Session Expiry Interval, Receive Maximum,
  Maximum Packet Size; will with QoS/retain; username/password), SUBSCRIBE,
  PUBLISH (QoS 0/1), PUBACK (one or many), PINGREQ, DISCONNECT;
* ``Decoder``: an incremental decoder for what a server sends a client:
  CONNACK, SUBACK, PUBLISH, PUBACK, PINGRESP, DISCONNECT.

Limitations, on purpose:

* QoS 2 is not supported: PUBREC/PUBREL/PUBCOMP and QoS 2 PUBLISH raise
  ``ProtocolError`` (subscribe with QoS <= 1 and the broker never sends them).
* No enhanced authentication (AUTH), no UNSUBSCRIBE, no topic aliases (we never
  announce Topic Alias Maximum, so a server must not use them).
* Properties of incoming PUBLISH packets are skipped, not decoded.

Malformed input raises ``ProtocolError``; after one the stream is out of sync
and the connection must be dropped.
"""

from __future__ import annotations

import struct
from typing import Iterable, NamedTuple, Union

__all__ = [
    "MQTTError",
    "ProtocolError",
    "Will",
    "Publish",
    "PubAck",
    "ConnAck",
    "SubAck",
    "PingResp",
    "Disconnect",
    "Packet",
    "Decoder",
    "encode_vbi",
    "decode_vbi",
    "encode_connect",
    "encode_subscribe",
    "encode_publish",
    "encode_puback",
    "encode_pubacks",
    "encode_pingreq",
    "encode_disconnect",
    "reason_text",
    "CONNECT",
    "CONNACK",
    "PUBLISH",
    "PUBACK",
    "SUBSCRIBE",
    "SUBACK",
    "PINGREQ",
    "PINGRESP",
    "DISCONNECT",
    "MAX_REMAINING_LENGTH",
]

# Packet types (the high nibble of the first byte).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15

PACKET_NAMES = {
    0: "reserved type 0",
    CONNECT: "CONNECT",
    CONNACK: "CONNACK",
    PUBLISH: "PUBLISH",
    PUBACK: "PUBACK",
    PUBREC: "PUBREC",
    PUBREL: "PUBREL",
    PUBCOMP: "PUBCOMP",
    SUBSCRIBE: "SUBSCRIBE",
    SUBACK: "SUBACK",
    UNSUBSCRIBE: "UNSUBSCRIBE",
    UNSUBACK: "UNSUBACK",
    PINGREQ: "PINGREQ",
    PINGRESP: "PINGRESP",
    DISCONNECT: "DISCONNECT",
    AUTH: "AUTH",
}

MAX_REMAINING_LENGTH = 268_435_455  # 4-byte variable byte integer


class MQTTError(Exception):
    """Base of every MQTT error raised by the codec and the client."""


class ProtocolError(MQTTError):
    """The peer sent bytes that are not valid MQTT (or use a feature we do not support)."""


# -- reason codes -------------------------------------------------------------

# MQTT 5.0 section 2.4, table 2-6.  Codes whose meaning depends on the packet
# (0x00, 0x01, 0x02, 0x04) are resolved in reason_text().
_REASONS_V5: dict[int, str] = {
    0x00: "success",
    0x01: "granted QoS 1",
    0x02: "granted QoS 2",
    0x04: "disconnect with will message",
    0x10: "no matching subscribers",
    0x11: "no subscription existed",
    0x18: "continue authentication",
    0x19: "re-authenticate",
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8B: "server shutting down",
    0x8C: "bad authentication method",
    0x8D: "keep alive timeout",
    0x8E: "session taken over",
    0x8F: "topic filter invalid",
    0x90: "topic name invalid",
    0x91: "packet identifier in use",
    0x92: "packet identifier not found",
    0x93: "receive maximum exceeded",
    0x94: "topic alias invalid",
    0x95: "packet too large",
    0x96: "message rate too high",
    0x97: "quota exceeded",
    0x98: "administrative action",
    0x99: "payload format invalid",
    0x9A: "retain not supported",
    0x9B: "QoS not supported",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9E: "shared subscriptions not supported",
    0x9F: "connection rate exceeded",
    0xA0: "maximum connect time",
    0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}

# MQTT 3.1.1 section 3.2.2.3, CONNACK return codes.
_CONNACK_V311: dict[int, str] = {
    0: "connection accepted",
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


def reason_text(code: int, packet: int = 0, v5: bool = True) -> str:
    """A readable name for a reason/return code, e.g. ``"not authorized (0x87)"``.

    ``packet`` is the packet type the code came in (CONNACK, SUBACK, PUBACK,
    DISCONNECT): some codes mean different things in different packets.
    """
    if not v5:
        if packet == CONNACK:
            return "%s (return code %d)" % (_CONNACK_V311.get(code, "unknown return code"), code)
        if packet == SUBACK:
            name = "granted QoS %d" % code if code <= 2 else ("failure" if code == 0x80 else "unknown return code")
            return "%s (0x%02X)" % (name, code)
    if code == 0x00:
        name = {SUBACK: "granted QoS 0", DISCONNECT: "normal disconnection"}.get(packet, "success")
    else:
        name = _REASONS_V5.get(code, "unknown reason code")
    return "%s (0x%02X)" % (name, code)


# -- variable byte integers ---------------------------------------------------


def encode_vbi(value: int) -> bytes:
    """Variable byte integer (MQTT 5 section 1.5.5): 7 bits a byte, high bit = more."""
    if not 0 <= value <= MAX_REMAINING_LENGTH:
        raise ValueError("variable byte integer out of range 0..%d: %d" % (MAX_REMAINING_LENGTH, value))
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_vbi(buf: bytes | bytearray | memoryview, pos: int, end: int | None = None) -> tuple[int, int]:
    """Decode a variable byte integer at ``pos``; returns (value, position after it).

    Returns (-1, -1) when ``buf`` ends (at ``end``) before the integer does;
    raises ProtocolError when it runs past 4 bytes.
    """
    if end is None:
        end = len(buf)
    value = 0
    shift = 0
    for i in range(pos, min(pos + 4, end)):
        b = buf[i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i + 1
        shift += 7
    if end - pos >= 4:
        raise ProtocolError("malformed variable byte integer: continuation bit set in its 4th byte")
    return -1, -1


# -- encoders -----------------------------------------------------------------


class Will(NamedTuple):
    """The last will: published by the broker when the connection ends without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


def _utf8(s: str, what: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 0xFFFF:
        raise ValueError("%s is %d bytes in UTF-8, MQTT allows at most 65535" % (what, len(b)))
    if "\x00" in s:
        raise ValueError("%s must not contain U+0000" % what)
    return len(b).to_bytes(2, "big") + b


def _binary(b: bytes, what: str) -> bytes:
    if len(b) > 0xFFFF:
        raise ValueError("%s is %d bytes, MQTT allows at most 65535" % (what, len(b)))
    return len(b).to_bytes(2, "big") + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_vbi(len(body)) + body


def encode_connect(
    client_id: str,
    *,
    v5: bool = True,
    clean_start: bool = True,
    keepalive: int = 60,
    username: str | None = None,
    password: str | bytes | None = None,
    will: Will | None = None,
    session_expiry: int | None = None,
    receive_maximum: int | None = None,
    max_packet_size: int | None = None,
) -> bytes:
    """CONNECT.  ``session_expiry``, ``receive_maximum`` and ``max_packet_size`` are MQTT 5 only."""
    if not 0 <= keepalive <= 0xFFFF:
        raise ValueError("keepalive must be 0..65535 seconds, not %d" % keepalive)
    if not v5:
        given = [
            n
            for n, v in (
                ("session_expiry", session_expiry),
                ("receive_maximum", receive_maximum),
                ("max_packet_size", max_packet_size),
            )
            if v is not None
        ]
        if given:
            raise ValueError("%s: MQTT 5 properties, not available with MQTT 3.1.1" % ", ".join(given))
        if password is not None and username is None:
            raise ValueError("MQTT 3.1.1 does not allow a password without a username")
        if not client_id and not clean_start:
            raise ValueError("MQTT 3.1.1 requires a client id for a persistent session (clean_start=False)")
    flags = 0x02 if clean_start else 0
    if will is not None:
        if will.qos not in (0, 1, 2):
            raise ValueError("will QoS must be 0, 1 or 2, not %r" % (will.qos,))
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    parts = [b"\x00\x04MQTT", b"\x05" if v5 else b"\x04", bytes((flags,)), keepalive.to_bytes(2, "big")]
    if v5:
        props = b""
        if session_expiry is not None:
            if not 0 <= session_expiry <= 0xFFFFFFFF:
                raise ValueError("session_expiry must be 0..4294967295 seconds, not %d" % session_expiry)
            if session_expiry:  # 0 is the default: no need to send it
                props += b"\x11" + session_expiry.to_bytes(4, "big")
        if receive_maximum is not None:
            if not 1 <= receive_maximum <= 0xFFFF:
                raise ValueError("receive_maximum must be 1..65535, not %d" % receive_maximum)
            props += b"\x21" + receive_maximum.to_bytes(2, "big")
        if max_packet_size is not None:
            if not 1 <= max_packet_size <= 0xFFFFFFFF:
                raise ValueError("max_packet_size must be 1..4294967295 bytes, not %d" % max_packet_size)
            props += b"\x27" + max_packet_size.to_bytes(4, "big")
        parts += [encode_vbi(len(props)), props]
    parts.append(_utf8(client_id, "client id"))
    if will is not None:
        if v5:
            parts.append(b"\x00")  # no will properties
        parts += [_utf8(will.topic, "will topic"), _binary(bytes(will.payload), "will payload")]
    if username is not None:
        parts.append(_utf8(username, "username"))
    if password is not None:
        parts.append(_binary(password.encode("utf-8") if isinstance(password, str) else password, "password"))
    return _packet(CONNECT << 4, b"".join(parts))


def encode_subscribe(packet_id: int, filters: Iterable[tuple[str, int]], *, v5: bool = True) -> bytes:
    """SUBSCRIBE for ``(topic filter, maximum QoS)`` pairs (no v5 subscription options beyond QoS)."""
    if not 1 <= packet_id <= 0xFFFF:
        raise ValueError("packet id must be 1..65535, not %d" % packet_id)
    parts = [packet_id.to_bytes(2, "big")]
    if v5:
        parts.append(b"\x00")
    count = 0
    for topic, qos in filters:
        if qos not in (0, 1, 2):
            raise ValueError("subscription QoS must be 0, 1 or 2, not %r (filter %r)" % (qos, topic))
        if not topic:
            raise ValueError("a topic filter must not be empty")
        parts += [_utf8(topic, "topic filter"), bytes((qos,))]
        count += 1
    if not count:
        raise ValueError("SUBSCRIBE needs at least one topic filter")
    return _packet((SUBSCRIBE << 4) | 0x02, b"".join(parts))


def encode_publish(
    topic: str,
    payload: bytes,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    packet_id: int = 0,
    v5: bool = True,
) -> bytes:
    """PUBLISH with QoS 0 or 1 (no v5 properties)."""
    t = topic.encode("utf-8")
    # One membership test each: cheap next to the rest, and a wildcard in a
    # topic name makes the broker drop the whole connection.
    if "+" in topic or "#" in topic or "\x00" in topic or not t or len(t) > 0xFFFF:
        raise ValueError(
            "invalid topic name for PUBLISH: %r (non-empty, at most 65535 bytes, no wildcards + or #)" % topic
        )
    if qos:
        if qos != 1:
            raise ValueError("QoS %r is not supported (0 or 1)" % (qos,))
        if not 1 <= packet_id <= 0xFFFF:
            raise ValueError("a QoS 1 PUBLISH needs a packet id 1..65535, not %d" % packet_id)
        tail = packet_id.to_bytes(2, "big") + (b"\x00" if v5 else b"")
    else:
        tail = b"\x00" if v5 else b""
    rl = 2 + len(t) + len(tail) + len(payload)
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    if rl < 0x80:
        head = bytes((first, rl))
    else:
        head = bytes((first,)) + encode_vbi(rl)
    return b"".join((head, len(t).to_bytes(2, "big"), t, tail, payload))


_PUBACK_PAIRS: dict[int, struct.Struct] = {}


def encode_puback(packet_id: int) -> bytes:
    """PUBACK (success; the 2-byte form is valid in both versions)."""
    if not 1 <= packet_id <= 0xFFFF:
        raise ValueError("packet id must be 1..65535, not %d" % packet_id)
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


def encode_pubacks(packet_ids: Iterable[int]) -> bytes:
    """Many PUBACKs back to back, for one write."""
    ids = list(packet_ids)
    n = len(ids)
    if not n:
        return b""
    if min(ids) < 1 or max(ids) > 0xFFFF:
        raise ValueError("packet ids must be 1..65535: %r" % [i for i in ids if not 1 <= i <= 0xFFFF][:5])
    # Each PUBACK is two big-endian 16-bit words, 0x4002 and the id: one
    # struct.pack for the lot instead of n small bytes objects.
    s = _PUBACK_PAIRS.get(n)
    if s is None:
        s = struct.Struct(">%dH" % (2 * n))
        if len(_PUBACK_PAIRS) < 64:
            _PUBACK_PAIRS[n] = s
    words = [0x4002] * (2 * n)
    words[1::2] = ids
    return s.pack(*words)


def encode_pingreq() -> bytes:
    return b"\xc0\x00"


def encode_disconnect(reason_code: int = 0, v5: bool = True) -> bytes:
    """DISCONNECT; 0x00 (normal) tells a v5 broker not to publish the will."""
    if not v5 or reason_code == 0:
        return b"\xe0\x00"
    return bytes((0xE0, 1, reason_code))


# -- decoded packets ----------------------------------------------------------


class Publish(NamedTuple):
    """An incoming PUBLISH.  ``packet_id`` is 0 for QoS 0."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int


# tuple.__new__ directly: half the cost of the NamedTuple constructor, and this
# runs once per received message.
_new_tuple = tuple.__new__


class PubAck(NamedTuple):
    packet_id: int
    reason_code: int = 0


class ConnAck(NamedTuple):
    session_present: bool
    reason_code: int  # v5 reason code or 3.1.1 return code
    # v5 properties (None when absent):
    receive_maximum: int | None = None
    maximum_packet_size: int | None = None
    assigned_client_identifier: str | None = None
    reason_string: str | None = None
    server_keep_alive: int | None = None
    session_expiry_interval: int | None = None
    maximum_qos: int | None = None
    retain_available: bool | None = None


class SubAck(NamedTuple):
    packet_id: int
    reason_codes: list[int]
    reason_string: str | None = None


class PingResp(NamedTuple):
    pass


class Disconnect(NamedTuple):
    reason_code: int = 0
    reason_string: str | None = None
    server_reference: str | None = None


Packet = Union[Publish, PubAck, ConnAck, SubAck, PingResp, Disconnect]

_PINGRESP = PingResp()

# Property identifier -> wire type (MQTT 5 section 2.2.2.2).
_BYTE, _U16, _U32, _VBI, _STR, _BIN, _PAIR = range(7)
_PROPERTY_TYPES: dict[int, int] = {
    0x01: _BYTE,
    0x02: _U32,
    0x03: _STR,
    0x08: _STR,
    0x09: _BIN,
    0x0B: _VBI,
    0x11: _U32,
    0x12: _STR,
    0x13: _U16,
    0x15: _STR,
    0x16: _BIN,
    0x17: _BYTE,
    0x18: _U32,
    0x19: _BYTE,
    0x1A: _STR,
    0x1C: _STR,
    0x1F: _STR,
    0x21: _U16,
    0x22: _U16,
    0x23: _U16,
    0x24: _BYTE,
    0x25: _BYTE,
    0x26: _PAIR,
    0x27: _U32,
    0x28: _BYTE,
    0x29: _BYTE,
    0x2A: _BYTE,
}


def _str_at(buf: bytes, pos: int, end: int, what: str) -> tuple[str, int]:
    if pos + 2 > end:
        raise ProtocolError("malformed %s: string length runs past the end of the packet" % what)
    n = (buf[pos] << 8) | buf[pos + 1]
    pos += 2
    if pos + n > end:
        raise ProtocolError("malformed %s: string of %d bytes runs past the end of the packet" % (what, n))
    try:
        return buf[pos : pos + n].decode("utf-8"), pos + n
    except UnicodeDecodeError as exc:
        raise ProtocolError("malformed %s: string is not valid UTF-8 (%s)" % (what, exc)) from None


def _properties(buf: bytes, pos: int, end: int, what: str) -> tuple[dict[int, int | str | bytes], int]:
    """Parse a v5 property block at ``pos``; returns ({id: value}, position after it).

    Repeated properties (user properties) keep only their last value: we use none of them.
    """
    length, pos = decode_vbi(buf, pos, end)
    if length < 0 or pos + length > end:
        raise ProtocolError("malformed %s: property length runs past the end of the packet" % what)
    stop = pos + length
    props: dict[int, int | str | bytes] = {}
    while pos < stop:
        pid = buf[pos]
        kind = _PROPERTY_TYPES.get(pid)
        pos += 1
        value: int | str | bytes
        if kind is None:
            raise ProtocolError("malformed %s: unknown property identifier 0x%02X" % (what, pid))
        if kind == _BYTE:
            if pos + 1 > stop:
                raise ProtocolError("malformed %s: property 0x%02X truncated" % (what, pid))
            value = buf[pos]
            pos += 1
        elif kind == _U16:
            if pos + 2 > stop:
                raise ProtocolError("malformed %s: property 0x%02X truncated" % (what, pid))
            value = (buf[pos] << 8) | buf[pos + 1]
            pos += 2
        elif kind == _U32:
            if pos + 4 > stop:
                raise ProtocolError("malformed %s: property 0x%02X truncated" % (what, pid))
            value = int.from_bytes(buf[pos : pos + 4], "big")
            pos += 4
        elif kind == _VBI:
            value, pos = decode_vbi(buf, pos, stop)
            if value < 0:
                raise ProtocolError("malformed %s: property 0x%02X truncated" % (what, pid))
        elif kind == _STR:
            value, pos = _str_at(buf, pos, stop, what)
        elif kind == _BIN:
            if pos + 2 > stop:
                raise ProtocolError("malformed %s: property 0x%02X truncated" % (what, pid))
            n = (buf[pos] << 8) | buf[pos + 1]
            if pos + 2 + n > stop:
                raise ProtocolError("malformed %s: property 0x%02X truncated" % (what, pid))
            value = buf[pos + 2 : pos + 2 + n]
            pos += 2 + n
        else:  # _PAIR
            key, pos = _str_at(buf, pos, stop, what)
            val, pos = _str_at(buf, pos, stop, what)
            value = "%s=%s" % (key, val)
        props[pid] = value
    return props, stop


def _opt_int(props: dict[int, int | str | bytes], pid: int) -> int | None:
    v = props.get(pid)
    return v if isinstance(v, int) else None


def _opt_str(props: dict[int, int | str | bytes], pid: int) -> str | None:
    v = props.get(pid)
    return v if isinstance(v, str) else None


class Decoder:
    """Incremental decoder for server-to-client packets.

    ``feed(data)`` returns every packet completed by ``data``, in order, and
    keeps an incomplete tail for the next call.  ``max_packet_size`` (what the
    client announced, if anything) bounds how much a single packet may make us
    buffer.
    """

    __slots__ = ("v5", "max_packet_size", "_tail", "_parts", "_have", "_need")

    def __init__(self, v5: bool = True, max_packet_size: int | None = None) -> None:
        self.v5 = v5
        self.max_packet_size = max_packet_size if max_packet_size is not None else MAX_REMAINING_LENGTH + 5
        self._tail = b""
        # A packet larger than one read arrives in many pieces: collect them and
        # join once it is complete, instead of re-concatenating every read.
        self._parts: list[bytes] = []
        self._have = 0
        self._need = 0

    def buffered(self) -> int:
        """Bytes held for an incomplete packet."""
        return len(self._tail) + self._have

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        if not isinstance(data, bytes):
            data = bytes(data)
        if self._parts or (self._tail and self._need > len(self._tail) + len(data)):
            if not self._parts:
                self._parts.append(self._tail)
                self._have = len(self._tail)
                self._tail = b""
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            buf = b"".join(self._parts)
            self._parts = []
            self._have = 0
        elif self._tail:
            buf = self._tail + data
        else:
            buf = data
        out: list[Packet] = []
        append = out.append
        need = 0
        n = len(buf)
        pos = 0
        v5 = self.v5
        limit = self.max_packet_size
        while pos + 2 <= n:
            first = buf[pos]
            rl = buf[pos + 1]
            if rl < 0x80:
                start = pos + 2
            else:
                rl, start = decode_vbi(buf, pos + 1, n)
                if start < 0:
                    break
            end = start + rl
            if end - pos > limit:
                raise ProtocolError(
                    "%s of %d bytes exceeds the maximum packet size of %d bytes"
                    % (PACKET_NAMES[first >> 4], end - pos, limit)
                )
            if end > n:
                need = end - pos
                break
            kind = first >> 4
            if kind == 3:  # PUBLISH, the hot path: inline
                if start + 2 > end:
                    raise ProtocolError("malformed PUBLISH: too short for its topic length")
                tl = (buf[start] << 8) | buf[start + 1]
                p = start + 2 + tl
                if p > end:
                    raise ProtocolError("malformed PUBLISH: topic length %d runs past the end of the packet" % tl)
                try:
                    topic = buf[start + 2 : p].decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ProtocolError("malformed PUBLISH: topic is not valid UTF-8 (%s)" % exc) from None
                qos = (first >> 1) & 3
                if qos:
                    if qos > 1:
                        raise ProtocolError(
                            "PUBLISH with QoS 2: QoS 2 is not supported (subscribe with QoS 0 or 1)"
                            if qos == 2
                            else "malformed PUBLISH: QoS 3"
                        )
                    pid = (buf[p] << 8) | buf[p + 1] if p + 2 <= end else 0
                    if pid == 0:
                        raise ProtocolError("malformed PUBLISH: QoS 1 without a packet id")
                    p += 2
                else:
                    pid = 0
                if v5:
                    if p >= end:
                        raise ProtocolError("malformed PUBLISH: missing property length")
                    plen = buf[p]
                    if plen < 0x80:
                        p += 1 + plen
                    else:
                        plen, p = decode_vbi(buf, p, end)
                        if plen < 0:
                            raise ProtocolError("malformed PUBLISH: truncated property length")
                        p += plen
                    if tl == 0:
                        raise ProtocolError(
                            "PUBLISH with an empty topic (a topic alias): topic aliases are "
                            "not supported and were not allowed in CONNECT"
                        )
                if p > end:
                    raise ProtocolError("malformed PUBLISH: topic/properties run past the end of the packet")
                append(_new_tuple(Publish, (topic, buf[p:end], qos, bool(first & 1), bool(first & 8), pid)))
            elif kind == 4:
                if first & 15 or rl < 2:
                    raise ProtocolError("malformed PUBACK (flags 0x%X, %d bytes)" % (first & 15, rl))
                pid = (buf[start] << 8) | buf[start + 1]
                if rl == 2:
                    append(PubAck(pid))
                elif v5:
                    append(PubAck(pid, buf[start + 2]))
                else:
                    raise ProtocolError("malformed MQTT 3.1.1 PUBACK: %d bytes, expected 2" % rl)
            else:
                append(self._other(kind, first & 15, buf, start, end))
            pos = end
        self._tail = buf[pos:] if pos < n else b""
        self._need = need  # 0 while the fixed header itself is incomplete (at most 4 bytes held)
        return out

    def _other(self, kind: int, flags: int, buf: bytes, start: int, end: int) -> Packet:
        v5 = self.v5
        rl = end - start
        name = PACKET_NAMES[kind]
        if kind in (PUBREC, PUBREL, PUBCOMP):
            raise ProtocolError("received %s: QoS 2 is not supported (subscribe and publish with QoS 0 or 1)" % name)
        if kind == AUTH:
            raise ProtocolError("received AUTH: enhanced authentication is not supported")
        if kind not in (CONNACK, SUBACK, PINGRESP, DISCONNECT):
            raise ProtocolError(
                "unexpected %s from the server (a server never sends it to a client, or we never asked for it)" % name
            )
        if flags:
            raise ProtocolError("malformed %s: reserved flags 0x%X must be 0" % (name, flags))
        if kind == PINGRESP:
            if rl:
                raise ProtocolError("malformed PINGRESP: %d bytes of body, expected none" % rl)
            return _PINGRESP
        if kind == CONNACK:
            if rl < 2 or (not v5 and rl != 2):
                raise ProtocolError("malformed CONNACK: %d bytes of body" % rl)
            ack = buf[start]
            if ack & 0xFE:
                raise ProtocolError("malformed CONNACK: reserved acknowledge flags 0x%02X" % ack)
            code = buf[start + 1]
            if not v5 or rl == 2:
                return ConnAck(bool(ack & 1), code)
            props, p = _properties(buf, start + 2, end, "CONNACK")
            ra = props.get(0x25)
            return ConnAck(
                bool(ack & 1),
                code,
                _opt_int(props, 0x21),
                _opt_int(props, 0x27),
                _opt_str(props, 0x12),
                _opt_str(props, 0x1F),
                _opt_int(props, 0x13),
                _opt_int(props, 0x11),
                _opt_int(props, 0x24),
                None if ra is None else bool(ra),
            )
        if kind == SUBACK:
            if rl < 3:
                raise ProtocolError("malformed SUBACK: %d bytes of body" % rl)
            pid = (buf[start] << 8) | buf[start + 1]
            p = start + 2
            reason_string = None
            if v5:
                props, p = _properties(buf, p, end, "SUBACK")
                reason_string = _opt_str(props, 0x1F)
            if p >= end:
                raise ProtocolError("malformed SUBACK: no reason codes")
            return SubAck(pid, list(buf[p:end]), reason_string)
        # DISCONNECT
        if not rl:
            return Disconnect()
        if not v5:
            raise ProtocolError("malformed DISCONNECT: MQTT 3.1.1 DISCONNECT has no body")
        code = buf[start]
        if rl == 1:
            return Disconnect(code)
        props, _ = _properties(buf, start + 1, end, "DISCONNECT")
        return Disconnect(code, _opt_str(props, 0x1F), _opt_str(props, 0x1C))
