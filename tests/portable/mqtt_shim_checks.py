"""Byte-exact checks of firmware_shim.mqtt against a fake socket.

The same file runs on CPython (tests/test_mqtt_shim.py imports it) and on
the MicroPython unix port (``micropython tests/portable/mqtt_shim_checks.py``
with the repo root on MICROPYPATH); it prints "PASS <n>" at the end.
Every expected packet is spelled out with its remaining length worked out
in the comment next to it (MQTT 3.1.1 §2.2: fixed header, remaining length,
variable header, payload).
"""

from firmware_shim import mqtt


class FakeSocket:
    """Serves scripted broker bytes, records what the client sends."""

    def __init__(self, incoming=b""):
        self.incoming = bytearray(incoming)
        self.sent = bytearray()
        self.blocking = True
        self.closed = False

    def feed(self, data):
        self.incoming += data

    def recv(self, n):
        if not self.incoming:
            if not self.blocking:
                raise OSError(11)  # EAGAIN, as a non-blocking socket does
            return b""  # the broker went away
        chunk = bytes(self.incoming[:n])
        self.incoming = self.incoming[n:]
        return chunk

    def sendall(self, data):
        self.sent += data

    def setblocking(self, flag):
        self.blocking = flag

    def settimeout(self, t):
        self.blocking = True

    def close(self):
        self.closed = True

    def take(self):
        out = bytes(self.sent)
        self.sent = bytearray()
        return out


def _client(incoming=b"\x20\x02\x00\x00", **kw):
    sock = FakeSocket(incoming)
    c = mqtt.MQTTClient("c1", "broker.invalid", **kw)
    c._open = lambda: sock
    return c, sock


def _raises(exc, fn, *args):
    try:
        fn(*args)
    except exc:
        return True
    raise AssertionError("%s not raised" % exc.__name__)


def check_connect():
    c, sock = _client(user="u", password="pw", keepalive=60)
    c.set_last_will("s/st", "offline", retain=True, qos=1)
    assert c.connect() == 0
    # flags 0xEE = user 0x80 | password 0x40 | will retain 0x20 | will QoS 1 0x08
    #              | will 0x04 | clean session 0x02
    # remaining 36 = 10 (variable header) + 4 ("c1") + 6 ("s/st") + 9 ("offline")
    #                + 3 ("u") + 4 ("pw")
    assert sock.take() == (b"\x10\x24" + b"\x00\x04MQTT\x04\xee\x00\x3c"
                           + b"\x00\x02c1" + b"\x00\x04s/st" + b"\x00\x07offline"
                           + b"\x00\x01u" + b"\x00\x02pw")
    # No will, no credentials, persistent session: flags 0, keepalive 0;
    # remaining 14 = 10 + 4 ("c1"). CONNACK with session present = 1.
    c, sock = _client(b"\x20\x02\x01\x00")
    assert c.connect(clean_session=False) == 1
    assert sock.take() == b"\x10\x0e\x00\x04MQTT\x04\x00\x00\x00\x00\x02c1"
    # CONNACK return code 5: not authorised.
    c, sock = _client(b"\x20\x02\x00\x05")
    _raises(mqtt.MQTTException, c.connect)
    # Something other than a CONNACK.
    c, sock = _client(b"\x30\x02\x00\x00")
    _raises(mqtt.MQTTException, c.connect)
    # The port defaults by TLS: 1883 plain, 8883 with TLS.
    assert mqtt.MQTTClient("a", "h").port == 1883
    assert mqtt.MQTTClient("a", "h", ssl=True).port == 8883
    return 6


def check_publish():
    c, sock = _client()
    c.connect()
    sock.take()
    # QoS 0: 0x30; remaining 7 = 5 (topic "t/a" with its 2-byte length) + 2 ("hi")
    c.publish("t/a", b"hi")
    assert sock.take() == b"\x30\x07\x00\x03t/a" + b"hi"
    # QoS 1 retained: 0x30 | QoS 1 << 1 | retain = 0x33; remaining 9 = 5 + 2 (packet id 1) + 2
    sock.feed(b"\x40\x02\x00\x01")  # PUBACK for packet id 1
    c.publish("t/a", "hi", retain=True, qos=1)
    assert sock.take() == b"\x33\x09\x00\x03t/a\x00\x01hi"
    assert not sock.incoming
    # 200-byte payload: remaining 205 = 5 + 200 -> 0xCD 0x01 (205 = 77 + 1 * 128,
    # low 7 bits 0x4D with the continuation bit 0x80 set, then 0x01)
    c.publish("t/a", b"x" * 200)
    assert sock.take() == b"\x30\xcd\x01\x00\x03t/a" + b"x" * 200
    # A message from the broker arrives while waiting for the PUBACK: the
    # callback gets it first, then the publish (packet id 2) completes.
    got = []
    c.set_callback(lambda t, m: got.append((t, m)))
    sock.feed(b"\x30\x06\x00\x03t/cz" + b"\x40\x02\x00\x02")
    c.publish("t/a", b"", qos=1)
    assert got == [(b"t/c", b"z")]
    assert sock.take() == b"\x32\x07\x00\x03t/a\x00\x02"  # remaining 7 = 5 + 2, empty payload
    # The connection dies before the PUBACK: the caller sees OSError and can retry.
    _raises(OSError, c.publish, "t/a", b"hi", False, 1)
    # QoS 2 is not supported.
    _raises(mqtt.MQTTException, c.publish, "t/a", b"hi", False, 2)
    return 7


def check_subscribe_and_receive():
    c, sock = _client()
    c.connect()
    sock.take()
    got = []
    c.set_callback(lambda t, m: got.append((t, m)))
    # SUBSCRIBE has fixed flags 0x2 (0x82); remaining 8 = 2 (packet id 1) + 5 ("t/#") + 1 (QoS)
    sock.feed(b"\x90\x03\x00\x01\x01")  # SUBACK packet id 1, granted QoS 1
    c.subscribe("t/#", qos=1)
    assert sock.take() == b"\x82\x08\x00\x01\x00\x03t/#\x01"
    # Refused subscription (SUBACK return code 0x80), packet id 2.
    sock.feed(b"\x90\x03\x00\x02\x80")
    _raises(mqtt.MQTTException, c.subscribe, "x", 0)
    sock.take()
    # Incoming QoS 1 PUBLISH (0x32), remaining 8 = 5 ("t/c") + 2 (packet id 0x0102) + 1 ("x"):
    # the client answers PUBACK 40 02 01 02.
    sock.feed(b"\x32\x08\x00\x03t/c\x01\x02x")
    assert c.check_msg() == 0x32
    assert got == [(b"t/c", b"x")]
    assert sock.take() == b"\x40\x02\x01\x02"
    # Nothing pending: check_msg returns None without blocking, and the
    # socket is back in blocking mode afterwards.
    assert c.check_msg() is None and sock.blocking
    # PINGREQ C0 00; PINGRESP D0 00 is consumed and yields None.
    c.ping()
    assert sock.take() == b"\xc0\x00"
    sock.feed(b"\xd0\x00")
    assert c.wait_msg() is None and not sock.incoming
    # A stale PUBACK read by check_msg is consumed whole, not left in the stream.
    sock.feed(b"\x40\x02\x00\x09\xd0\x00")
    assert c.check_msg() == 0x40
    assert c.check_msg() is None and not sock.incoming
    # Peer closed: b"" from a blocking read is an error, as in umqtt.simple.
    _raises(OSError, c.wait_msg)
    # Clean DISCONNECT: E0 00, then the socket is closed.
    c.disconnect()
    assert sock.take() == b"\xe0\x00" and sock.closed and c.sock is None
    return 10


def check_packet_ids():
    c, sock = _client()
    c.connect()
    c.pid = 0xFFFF  # wraps to 1, never 0 (§2.3.1)
    sock.feed(b"\x40\x02\x00\x01")
    c.publish("t", b"", qos=1)
    assert sock.take()[-2:] == b"\x00\x01"
    return 1


def main():
    total = 0
    for name, fn in (("connect", check_connect), ("publish", check_publish),
                     ("subscribe", check_subscribe_and_receive), ("packet ids", check_packet_ids)):
        n = fn()
        print("%s: %d checks" % (name, n))
        total += n
    print("PASS %d" % total)
    return total


if __name__ == "__main__":
    main()
