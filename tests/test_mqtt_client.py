"""gateway/mqtt_codec.py and gateway/mqtt_client.py: codec units and properties,
byte-for-byte against paho, and the client against a real Mosquitto with paho
as the independent client on the other side of the broker.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from broker import Mosquitto, free_port
from gateway.mqtt_client import Connection, ConnectionLost, Incoming, Refused, backoff_delays
from gateway.mqtt_codec import (
    CONNACK,
    DISCONNECT,
    SUBACK,
    ConnAck,
    Decoder,
    Disconnect,
    PingResp,
    ProtocolError,
    PubAck,
    Publish,
    SubAck,
    Will,
    decode_vbi,
    encode_connect,
    encode_puback,
    encode_pubacks,
    encode_publish,
    encode_subscribe,
    encode_vbi,
    reason_text,
)

pytestmark = pytest.mark.timeout(60)

VERSIONS = ["5", "3.1.1"]


# -- codec --------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,size", [(0, 1), (127, 1), (128, 2), (16383, 2), (16384, 3), (2097151, 3), (2097152, 4), (268435455, 4)]
)
def test_variable_byte_integer_boundaries(value: int, size: int) -> None:
    enc = encode_vbi(value)
    assert len(enc) == size
    assert decode_vbi(enc + b"\xff", 0) == (value, size)
    # One byte short: incomplete, not an error.
    assert decode_vbi(enc[:-1], 0) == (-1, -1)


def test_variable_byte_integer_limits() -> None:
    with pytest.raises(ValueError):
        encode_vbi(268435456)
    with pytest.raises(ValueError):
        encode_vbi(-1)
    with pytest.raises(ProtocolError, match="4th byte"):
        decode_vbi(b"\xff\xff\xff\xff\x01", 0)


def _props(*items: bytes) -> bytes:
    body = b"".join(items)
    return encode_vbi(len(body)) + body


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_vbi(len(body)) + bytes(body)


def _str(s: str) -> bytes:
    b = s.encode()
    return bytes(len(b).to_bytes(2, "big") + b)


def _v5_stream() -> tuple[bytes, list[Any]]:
    """Every server-to-client packet type, v5, with properties, and what it decodes to."""
    connack = _packet(
        0x20,
        b"\x01\x00"
        + _props(
            b"\x21\x00\x05",
            b"\x27\x00\x01\x00\x00",
            b"\x12" + _str("auto-1"),
            b"\x1f" + _str("welcome"),
            b"\x13\x00\x3c",
            b"\x26" + _str("k") + _str("v"),
            b"\x24\x01",
            b"\x25\x00",
        ),
    )
    suback = _packet(0x90, b"\x00\x07" + _props(b"\x1f" + _str("ok")) + b"\x01\x00\x87")
    # A PUBLISH with properties (message expiry, user property, subscription id) that must be skipped.
    pub_props = _packet(
        0x33,
        _str("a/b")
        + b"\x00\x09"
        + _props(b"\x02\x00\x00\x00\x10", b"\x26" + _str("x") + _str("y"), b"\x0b\x81\x01")
        + b"payload",
    )
    big = bytes(range(256)) * 80  # 20480 bytes: a 3-byte remaining length
    packets = [
        connack,
        suback,
        encode_publish("t/1", b"", 0, False, False, 0, True),
        encode_publish("t/2", b"x" * 200, 1, True, True, 65535, True),
        pub_props,
        encode_publish("t/\u00e9", big, 1, False, False, 3, True),
        b"\x40\x02\x00\x09",
        b"\x40\x03\x00\x0a\x10",
        b"\x40\x04\x00\x0b\x87\x00",
        b"\xd0\x00",
        _packet(0xE0, b"\x8e" + _props(b"\x1f" + _str("taken over"))),
    ]
    expected = [
        ConnAck(True, 0, 5, 65536, "auto-1", "welcome", 60, None, 1, False),
        SubAck(7, [1, 0, 0x87], "ok"),
        Publish("t/1", b"", 0, False, False, 0),
        Publish("t/2", b"x" * 200, 1, True, True, 65535),
        Publish("a/b", b"payload", 1, True, False, 9),
        Publish("t/\u00e9", big, 1, False, False, 3),
        PubAck(9, 0),
        PubAck(10, 0x10),
        PubAck(11, 0x87),
        PingResp(),
        Disconnect(0x8E, "taken over"),
    ]
    return b"".join(packets), expected


def test_decoder_all_packet_types_v5() -> None:
    data, expected = _v5_stream()
    assert Decoder(True).feed(data) == expected


def test_decoder_byte_by_byte_equals_all_at_once() -> None:
    data, expected = _v5_stream()
    d = Decoder(True)
    got: list[Any] = []
    for i in range(len(data)):
        got += d.feed(data[i : i + 1])
    assert got == expected == Decoder(True).feed(data)
    assert d.buffered() == 0


def test_decoder_v311() -> None:
    data = b"".join(
        [
            b"\x20\x02\x00\x05",
            b"\x90\x04\x00\x01\x01\x80",
            encode_publish("x/y", b"hi", 1, False, True, 5, False),
            b"\x40\x02\x00\x05",
            b"\xd0\x00",
        ]
    )
    assert Decoder(False).feed(data) == [
        ConnAck(False, 5),
        SubAck(1, [1, 0x80]),
        Publish("x/y", b"hi", 1, False, True, 5),
        PubAck(5),
        PingResp(),
    ]


@pytest.mark.parametrize(
    "data,v5,match",
    [
        (b"\x30\xff\xff\xff\xff\x01", True, "4th byte"),
        (b"\x36\x05\x00\x01a\x00\x01", True, "QoS 3"),
        (b"\x34\x06\x00\x01a\x00\x01\x00", True, "QoS 2 is not supported"),
        (b"\x32\x06\x00\x01a\x00\x00\x00", True, "without a packet id"),
        (b"\x30\x04\x00\x02\xff\xfe", False, "UTF-8"),
        (b"\x30\x03\x00\x09a", False, "runs past"),
        (b"\x30\x03\x00\x00\x00", True, "topic alias"),
        (b"\x50\x02\x00\x01", True, "QoS 2 is not supported"),
        (b"\x20\x03\x02\x00\x00", True, "reserved acknowledge flags"),
        (b"\x20\x03\x00\x00\x00", False, "CONNACK"),
        (b"\xd0\x01\x00", True, "PINGRESP"),
        (b"\x20\x05\x00\x00\x02\x7f\x00", True, "unknown property identifier 0x7F"),
        (b"\x20\x05\x00\x00\x05\x21\x00", True, "property length runs past"),
        (b"\x90\x03\x00\x01\x00", True, "no reason codes"),
        (b"\x00\x00", True, "unexpected reserved type 0"),
        (b"\x10\x00", True, "unexpected CONNECT"),
        (b"\xf0\x00", True, "AUTH"),
        (b"\x41\x02\x00\x01", True, "malformed PUBACK"),
        (b"\x40\x03\x00\x01\x00", False, "3.1.1 PUBACK"),
        (b"\xe0\x01\x00", False, "3.1.1 DISCONNECT"),
    ],
)
def test_malformed_input_raises_protocol_error(data: bytes, v5: bool, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        Decoder(v5).feed(data)


def test_decoder_enforces_max_packet_size_before_buffering() -> None:
    d = Decoder(True, max_packet_size=1000)
    # Only the header of a 2000-byte PUBLISH: rejected at once, not after 2000 bytes arrive.
    with pytest.raises(ProtocolError, match="maximum packet size of 1000"):
        d.feed(encode_publish("t", b"x" * 2000, 0)[:4])


def test_reason_texts() -> None:
    assert reason_text(0x87, CONNACK) == "not authorized (0x87)"
    assert reason_text(0x00, SUBACK) == "granted QoS 0 (0x00)"
    assert reason_text(0x00, DISCONNECT) == "normal disconnection (0x00)"
    assert reason_text(0x8E, DISCONNECT) == "session taken over (0x8E)"
    assert reason_text(5, CONNACK, v5=False) == "not authorized (return code 5)"
    assert reason_text(0x80, SUBACK, v5=False) == "failure (0x80)"


def test_encoders_validate() -> None:
    with pytest.raises(ValueError, match="wildcards"):
        encode_publish("a/+", b"", 0)
    with pytest.raises(ValueError, match="packet id"):
        encode_publish("a", b"", 1)
    with pytest.raises(ValueError, match="not supported"):
        encode_publish("a", b"", 2, packet_id=1)
    with pytest.raises(ValueError, match="MQTT 5 properties"):
        encode_connect("c", v5=False, session_expiry=10)
    with pytest.raises(ValueError, match="password without a username"):
        encode_connect("c", v5=False, password="p")
    with pytest.raises(ValueError, match="at least one"):
        encode_subscribe(1, [])
    assert encode_pubacks([1, 258, 65535]) == encode_puback(1) + encode_puback(258) + encode_puback(65535)
    assert encode_pubacks([]) == b""


publishes = st.lists(
    st.tuples(
        st.text(
            alphabet=st.characters(exclude_characters="+#\x00", exclude_categories=["Cs"]), min_size=1, max_size=30
        ),
        st.binary(max_size=300),
        st.sampled_from([0, 1]),
        st.booleans(),
        st.booleans(),
        st.integers(1, 65535),
    ),
    max_size=20,
)


@settings(max_examples=200, deadline=None)
@given(msgs=publishes, v5=st.booleans(), cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_publish_roundtrip_split_anywhere(
    msgs: list[tuple[str, bytes, int, bool, bool, int]], v5: bool, cuts: list[int]
) -> None:
    data = b"".join(encode_publish(t, p, q, r, d, pid if q else 0, v5) for t, p, q, r, d, pid in msgs)
    points = sorted({c % (len(data) + 1) for c in cuts})
    dec = Decoder(v5)
    got: list[Any] = []
    prev = 0
    for c in points + [len(data)]:
        got += dec.feed(data[prev:c])
        prev = c
    assert got == [Publish(t, p, q, r, d, pid if q else 0) for t, p, q, r, d, pid in msgs]
    assert dec.buffered() == 0


def test_backoff_delays_grow_with_jitter_and_cap() -> None:
    it = backoff_delays(1, 8)
    ds = [next(it) for _ in range(10)]
    assert ds[0] == 1.0
    assert all(1.0 <= d <= 8.0 for d in ds)
    assert all(4.0 <= d for d in ds[5:])


def _capture_paho(setup: Callable[[mqtt.Client, int], None], want: int, connack: bytes) -> bytes:
    """Bytes paho writes to a fake broker, up to ``want`` bytes after CONNECT."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        out: list[bytes] = []
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="cid", protocol=mqtt.MQTTv5 if connack[1] == 3 else mqtt.MQTTv311
        )
        setup(c, port)
        s, _ = srv.accept()
        with s:
            s.settimeout(5)
            buf = b""
            while len(buf) < want:
                c.loop(0.05)
                if not out:
                    s.sendall(connack)
                    out.append(b"")
                try:
                    s.settimeout(0.05)
                    buf += s.recv(65536)
                except socket.timeout:
                    pass
        c.loop(0.01)
        return buf


@pytest.mark.timeout(20)
def test_encodings_match_paho_byte_for_byte() -> None:
    ours_connect = encode_connect(
        "cid",
        v5=True,
        clean_start=False,
        keepalive=30,
        username="u",
        password="p",
        will=Will("w/t", b"bye", 1, True),
        session_expiry=3600,
        receive_maximum=100,
        max_packet_size=65536,
    )
    ours_pub = encode_publish("a/b", b"xyz", 1, False, False, 1, True)
    ours_sub = encode_subscribe(2, [("a/#", 1), ("b/+", 0)], v5=True)

    def v5(c: mqtt.Client, port: int) -> None:
        c.username_pw_set("u", "p")
        c.will_set("w/t", b"bye", qos=1, retain=True)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        props.ReceiveMaximum = 100
        props.MaximumPacketSize = 65536
        c.connect("127.0.0.1", port, keepalive=30, clean_start=False, properties=props)
        c.publish("a/b", b"xyz", qos=1)
        c.subscribe([("a/#", 1), ("b/+", 0)])

    got = _capture_paho(v5, len(ours_connect) + len(ours_pub) + len(ours_sub), b"\x20\x03\x00\x00\x00")
    assert got == ours_connect + ours_pub + ours_sub

    ours311 = (
        encode_connect("cid", v5=False, clean_start=True, keepalive=15, username="u")
        + encode_publish("x", b"1", 0, True, False, 0, False)
        + encode_subscribe(2, [("x/#", 1)], v5=False)
    )  # paho gave the QoS 0 publish mid 1

    def v311(c: mqtt.Client, port: int) -> None:
        c.username_pw_set("u")
        c.connect("127.0.0.1", port, keepalive=15)
        c.publish("x", b"1", qos=0, retain=True)
        c.subscribe("x/#", 1)

    assert _capture_paho(v311, len(ours311), b"\x20\x02\x00\x00") == ours311


# -- against Mosquitto ----------------------------------------------------------


class Peer:
    """paho on the other side of the broker: publishes, and collects what it subscribed to."""

    _n = 0

    def __init__(self, port: int, topics: list[str] | None = None) -> None:
        Peer._n += 1
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.topics = topics or []
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="peer-%d-%d" % (os.getpid(), Peer._n), protocol=mqtt.MQTTv5
        )
        self.c.on_message = self._msg
        self.c.on_connect = self._conn
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]  # floats work, and restart tests need them
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.ready.wait(10), "paho peer did not connect/subscribe"

    def _conn(self, c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any = None) -> None:
        if self.topics:
            c.subscribe([(t, 1) for t in self.topics])
        else:
            self.ready.set()

    def _msg(self, c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append((m.topic, bytes(m.payload)))

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.c.publish(topic, payload, qos=qos).wait_for_publish(10)

    def wait_count(self, n: int, timeout: float = 15.0) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.got) >= n:
                    return list(self.got)
            time.sleep(0.01)
        with self.lock:
            raise AssertionError("paho peer got %d messages, expected %d" % (len(self.got), n))

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    made: list[Peer] = []

    def make(port: int, topics: list[str] | None = None) -> Peer:
        p = Peer(port, topics)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def receive(conn: Connection, n: int, timeout: float = 10.0, ack: bool = True) -> list[Incoming]:
    """Poll until ``n`` messages arrived, acknowledging them as they come (the broker
    sends at most max_inflight_messages, 20 by default, before it wants PUBACKs)."""
    got: list[Incoming] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        msgs = conn.poll(0.2)
        if ack:
            conn.ack(m.packet_id for m in msgs if m.qos)
        got += msgs
    assert len(got) >= n, "received %d of %d messages" % (len(got), n)
    return got


@pytest.mark.parametrize("version", VERSIONS)
def test_connect_subscribe_receive_ack(broker: Mosquitto, peers: Callable[..., Peer], version: str) -> None:
    conn = Connection("127.0.0.1", broker.port, "recv-" + version, version=version, clean_start=True)
    assert conn.connect() is False
    assert conn.subscribe([("t/#", 1), ("q0/#", 0)]) == [1, 0]
    pub = peers(broker.port)
    for i in range(20):
        pub.publish("t/%d" % i, b"m%d" % i)
    pub.publish("q0/x", b"zero", qos=0)
    got = receive(conn, 21)
    assert [(m.topic, m.payload, m.qos) for m in got[:20]] == [("t/%d" % i, b"m%d" % i, 1) for i in range(20)]
    assert all(m.packet_id and not m.dup and not m.retain for m in got[:20])
    assert (got[20].topic, got[20].payload, got[20].qos, got[20].packet_id) == ("q0/x", b"zero", 0, 0)
    # Our own publishes come back through the broker too, in both versions.
    conn.publish([("t/self/%d" % i, b"s%d" % i, False) for i in range(30)])
    assert conn.wait_acked(10) and conn.unacked() == 0
    back = receive(conn, 30)
    assert [m.payload for m in back] == [b"s%d" % i for i in range(30)]
    conn.disconnect()
    assert not conn.connected


@pytest.mark.parametrize("version", VERSIONS)
def test_unacked_message_redelivered_with_dup_to_persistent_session(
    broker: Mosquitto, peers: Callable[..., Peer], version: str
) -> None:
    conn = Connection(
        "127.0.0.1", broker.port, "persist-" + version, version=version, clean_start=False, session_expiry=300
    )
    conn.connect()
    conn.subscribe([("p/#", 1)])
    pub = peers(broker.port)
    pub.publish("p/1", b"acked")
    pub.publish("p/2", b"not acked")
    first, second = receive(conn, 2, ack=False)
    conn.ack([first.packet_id])
    time.sleep(0.1)  # the PUBACK reaches the broker before we vanish
    conn.close()
    assert conn.connect() is True
    again = receive(conn, 1, ack=False)
    assert [(m.topic, m.payload, m.dup, m.packet_id) for m in again] == [("p/2", b"not acked", True, second.packet_id)]
    conn.ack([again[0].packet_id])
    assert conn.poll(0.5) == []
    conn.close()
    # Acknowledged now: not delivered a third time.
    assert conn.connect() is True
    assert conn.poll(0.5) == []
    conn.disconnect()


@pytest.mark.timeout(60)
def test_publish_5000_in_order_honouring_small_receive_maximum(tmp_path: Path, peers: Callable[..., Peer]) -> None:
    b = Mosquitto(tmp_path / "mq", extra_conf="max_inflight_messages 5")
    b.start()
    try:
        sub = peers(b.port, ["bulk/#"])
        conn = Connection("127.0.0.1", b.port, "bulk-pub", clean_start=True)
        conn.connect()
        assert conn.connack is not None and conn.connack.receive_maximum == 5
        assert conn.send_window == 5
        n = 5000
        for start in range(0, n, 250):
            conn.publish(("bulk/%d" % (i % 7), b"%06d" % i + b"." * 170, False) for i in range(start, start + 250))
            # Never more in flight than the broker allows.
            assert conn.unacked() <= 5
        assert conn.wait_acked(20)
        got = sub.wait_count(n, 30)
        assert [p[:6] for _, p in got] == [b"%06d" % i for i in range(n)]
        assert [t for t, _ in got] == ["bulk/%d" % (i % 7) for i in range(n)]
        conn.disconnect()
    finally:
        b.stop()


@pytest.mark.timeout(60)
def test_resend_unacked_after_broker_killed_and_restarted(tmp_path: Path, peers: Callable[..., Peer]) -> None:
    # No Receive Maximum at first (Mosquitto's default announces 20): 300 can be
    # in flight when the broker dies.  After the restart it allows 5, so the
    # resend must go out in windows.
    b = Mosquitto(tmp_path / "mq", extra_conf="max_inflight_messages 0")
    b.start()
    try:
        sub = peers(b.port, ["r/#"])
        conn = Connection("127.0.0.1", b.port, "resender", clean_start=True, keepalive=5)
        conn.connect()
        conn.publish([("r/a", b"%04d" % i, False) for i in range(100)])
        assert conn.wait_acked(10)
        sub.wait_count(100)
        # Freeze the broker so nothing more is acknowledged, publish, then kill it:
        # these 300 are unacked on our side and lost on the broker's.
        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGSTOP)
        conn.publish([("r/b", b"%04d" % i, False) for i in range(100, 400)])
        assert conn.unacked() == 300
        sub.ready.clear()
        b.stop(kill=True)
        with pytest.raises(ConnectionLost):
            conn.wait_acked(10)
        assert conn.unacked() == 300 and not conn.connected
        b.extra_conf = "max_inflight_messages 5"
        b.start()
        assert sub.ready.wait(10), "paho subscriber did not come back"
        for delay in backoff_delays(0.05, 0.5):
            try:
                conn.connect()
                break
            except ConnectionLost:
                time.sleep(delay)
        assert conn.send_window == 5
        conn.resend_unacked()
        assert conn.wait_acked(10) and conn.unacked() == 0
        conn.resend_unacked()  # a second call on the same connection sends nothing
        got = sub.wait_count(400)
        payloads = [int(p) for _, p in got]
        assert payloads[:100] == list(range(100))
        # At least once, in order: the first time each arrives is in publish order.
        firsts: list[int] = []
        for p in payloads:
            if p not in firsts:
                firsts.append(p)
        assert firsts == list(range(400))
        conn.disconnect()
    finally:
        b.stop()


@pytest.mark.parametrize("version", VERSIONS)
def test_will_on_close_not_on_disconnect(broker: Mosquitto, peers: Callable[..., Peer], version: str) -> None:
    watch = peers(broker.port, ["will/#"])
    a = Connection("127.0.0.1", broker.port, "will-a", version=version, will=Will("will/a", b"gone", 1, False))
    a.connect()
    a.close()
    assert watch.wait_count(1, 5) == [("will/a", b"gone")]
    b = Connection("127.0.0.1", broker.port, "will-b", version=version, will=Will("will/b", b"gone", 1, False))
    b.connect()
    b.disconnect()
    time.sleep(0.5)
    watch.publish("will/marker", b"m")
    assert watch.wait_count(2, 5) == [("will/a", b"gone"), ("will/marker", b"m")]


@pytest.mark.parametrize("version", VERSIONS)
def test_bad_credentials_refused_with_readable_reason(tmp_path: Path, version: str) -> None:
    pw = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(pw), "alice", "secret"], check=True, timeout=10, capture_output=True
    )
    b = Mosquitto(tmp_path / "mq", extra_conf="allow_anonymous false\npassword_file %s" % pw)
    b.start()
    try:
        bad = Connection("127.0.0.1", b.port, "cred", version=version, username="alice", password="wrong")
        with pytest.raises(Refused) as info:
            bad.connect()
        assert info.value.reason_code in ((0x86, 0x87) if version == "5" else (4, 5))
        assert "refused the connection" in str(info.value) and "check username/password" in str(info.value)
        assert "not authorized" in str(info.value) or "bad user name or password" in str(info.value)
        assert not bad.connected
        good = Connection("127.0.0.1", b.port, "cred", version=version, username="alice", password="secret")
        good.connect()
        good.disconnect()
    finally:
        b.stop()


def test_shared_subscription_splits_messages(broker: Mosquitto, peers: Callable[..., Peer]) -> None:
    conns = [Connection("127.0.0.1", broker.port, "share-%d" % i, clean_start=True) for i in range(2)]
    for c in conns:
        c.connect()
        assert c.subscribe([("$share/g/s/#", 1)]) == [1]
    pub = peers(broker.port)
    for i in range(40):
        pub.publish("s/x", b"%d" % i)
    got: list[list[bytes]] = [[], []]
    deadline = time.monotonic() + 10
    while sum(map(len, got)) < 40 and time.monotonic() < deadline:
        for i, c in enumerate(conns):
            msgs = c.poll(0.05)
            got[i] += [m.payload for m in msgs]
            c.ack(m.packet_id for m in msgs)
    assert sorted(int(p) for p in got[0] + got[1]) == list(range(40))
    assert got[0] and got[1]
    for c in conns:
        c.disconnect()


def test_tls_with_ca_file(tmp_path: Path, peers: Callable[..., Peer]) -> None:
    from test_acl_tls import make_pki

    ca, cert, key = make_pki(tmp_path / "pki")
    tls_port = free_port()
    b = Mosquitto(
        tmp_path / "mq",
        extra_conf="listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s" % (tls_port, ca, cert, key),
    )
    b.start()
    try:
        conn = Connection("127.0.0.1", tls_port, "tls", tls=True, ca_file=str(ca), clean_start=True)
        conn.connect()
        conn.subscribe([("sec/#", 1)])
        pub = peers(b.port)  # plain listener on the same broker
        payloads = [bytes([i]) * 5000 for i in range(30)]  # spans many TLS records
        for p in payloads:
            pub.publish("sec/x", p)
        got = receive(conn, 30)
        assert [m.payload for m in got] == payloads
        conn.publish([("sec/y", b"over tls", False)])
        assert conn.wait_acked(10)
        assert [m.payload for m in receive(conn, 1)] == [b"over tls"]
        conn.disconnect()
        # Without the CA (system trust store only): a readable verification failure.
        with pytest.raises(ConnectionLost, match="failed verification.*ca_file"):
            Connection("127.0.0.1", tls_port, "tls2", tls=True).connect(timeout=5)
        # Plain MQTT to the TLS listener: the broker hangs up, we say why that may be.
        with pytest.raises(ConnectionLost, match=r"before CONNACK.*expect TLS \(tls=True\)"):
            Connection("127.0.0.1", tls_port, "tls4").connect(timeout=5)
        # TLS to the plain listener: the handshake fails, it does not hang.
        with pytest.raises(ConnectionLost, match="TLS handshake"):
            Connection("127.0.0.1", b.port, "tls3", tls=True, ca_file=str(ca)).connect(timeout=5)
    finally:
        b.stop()


def test_connection_refused_is_readable() -> None:
    port = free_port()
    with pytest.raises(ConnectionLost, match="cannot connect to the MQTT broker at 127.0.0.1:%d" % port):
        Connection("127.0.0.1", port, "nobody").connect(timeout=2)
    with pytest.raises(ConnectionLost, match="call connect"):
        Connection("127.0.0.1", port, "nobody").poll(0)


def test_keepalive_pings_keep_the_connection(broker: Mosquitto) -> None:
    conn = Connection("127.0.0.1", broker.port, "pinger", keepalive=1, clean_start=True)
    conn.connect()
    # Mosquitto drops a client silent for 1.5 x keepalive; poll() must ping in time.
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        assert conn.poll(0.7) == []
    assert conn.connected
    conn.publish([("k/a", b"still here", False)])
    assert conn.wait_acked(5)
    conn.disconnect()


def test_session_taken_over_raises_connection_lost(broker: Mosquitto) -> None:
    first = Connection("127.0.0.1", broker.port, "same-id", clean_start=True)
    first.connect()
    second = Connection("127.0.0.1", broker.port, "same-id", clean_start=True)
    second.connect()
    # Mosquitto 2.0 just closes the old connection (newer versions send DISCONNECT 0x8E first).
    with pytest.raises(ConnectionLost, match="closed the connection|session taken over"):
        for _ in range(50):
            first.poll(0.1)
    assert not first.connected
    second.disconnect()


def fake_broker(serve: Callable[[socket.socket], None]) -> tuple[int, threading.Thread]:
    """A one-connection TCP server running ``serve(conn)``: for what Mosquitto 2.0 never sends."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def run() -> None:
        with srv:
            s, _ = srv.accept()
            with s:
                s.settimeout(5)
                serve(s)
                try:
                    s.recv(1000)  # until the client goes
                except OSError:
                    pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return srv.getsockname()[1], t


def test_server_disconnect_after_messages() -> None:
    """CONNACK, then a PUBLISH and a v5 DISCONNECT in one write: the message is
    returned first, the next poll() raises with the reason."""

    def serve(s: socket.socket) -> None:
        s.recv(1000)
        s.sendall(b"\x20\x03\x00\x00\x00")
        s.sendall(
            encode_publish("f/a", b"last", 1, False, False, 7, True)
            + _packet(0xE0, b"\x8e" + _props(b"\x1f" + _str("bye")))
        )

    port, t = fake_broker(serve)
    conn = Connection("127.0.0.1", port, "fake", clean_start=True)
    conn.connect(timeout=5)
    got = receive(conn, 1, ack=False)
    assert [(m.topic, m.payload, m.packet_id) for m in got] == [("f/a", b"last", 7)]
    with pytest.raises(ConnectionLost, match=r"session taken over \(0x8E\): bye \(another client"):
        conn.poll(1)
    with pytest.raises(ConnectionLost, match="connect\\(\\) again"):
        conn.ack([7])
    t.join(5)


@pytest.mark.parametrize("version", VERSIONS)
def test_subscription_refused_by_suback(version: str) -> None:
    v5 = version == "5"

    def serve(s: socket.socket) -> None:
        s.recv(1000)
        s.sendall(b"\x20\x03\x00\x00\x00" if v5 else b"\x20\x02\x00\x00")
        sub = s.recv(1000)
        assert sub[0] == 0x82
        pid = sub[2:4]
        s.sendall(_packet(0x90, pid + (b"\x00\x01\x87" if v5 else b"\x01\x80")))

    port, t = fake_broker(serve)
    conn = Connection("127.0.0.1", port, "fake-sub", version=version, clean_start=True)
    conn.connect(timeout=5)
    with pytest.raises(
        Refused,
        match=r"refused the subscription to 'secret/#' \(%s\): check the broker's ACL"
        % (r"not authorized \(0x87\)" if v5 else r"failure \(0x80\)"),
    ) as info:
        conn.subscribe([("ok/#", 1), ("secret/#", 1)])
    assert info.value.reason_code == (0x87 if v5 else 0x80)
    assert conn.connected
    conn.close()
    t.join(5)


def test_packet_ids_wrap_through_the_broker(broker: Mosquitto, peers: Callable[..., Peer]) -> None:
    sub = peers(broker.port, ["w/#"])
    conn = Connection("127.0.0.1", broker.port, "wrap", clean_start=True, max_inflight=10)
    conn.connect()
    conn._session._last_id = 65530  # ids wrap within these 30 (the rule: tests/test_mqtt_session.py)
    conn.publish([("w/x", b"%d" % i, False) for i in range(30)])
    assert conn.wait_acked(10)
    assert [p for _, p in sub.wait_count(30)] == [b"%d" % i for i in range(30)]
    conn.disconnect()


def test_publish_too_large_for_broker_maximum_packet_size(tmp_path: Path) -> None:
    b = Mosquitto(tmp_path / "mq", extra_conf="max_packet_size 1000")
    b.start()
    try:
        conn = Connection("127.0.0.1", b.port, "big", clean_start=True)
        conn.connect()
        assert conn.connack is not None and conn.connack.maximum_packet_size == 1000
        with pytest.raises(Exception, match="maximum packet size of 1000"):
            conn.publish([("m/a", b"ok", False), ("m/b", b"x" * 2000, False)])
        # The message before the oversized one still went out.
        assert conn.wait_acked(5) and conn.unacked() == 0
        conn.disconnect()
    finally:
        b.stop()
