"""A minimal MQTT 3.1.1 client with micropython-lib ``umqtt.simple``'s API.

Used on firmware that does not ship umqtt.simple, so the agent talks to one
API either way.  Covers what a Surge device needs: CONNECT (with last will,
user name, password), PUBLISH at QoS 0 and 1 (QoS 1 waits for its PUBACK),
SUBSCRIBE, PINGREQ and a clean DISCONNECT.  Runs unchanged on CPython, which
is how the byte-exact tests drive it against a fake socket.

Differences from umqtt.simple, all additive: ``wait_msg`` consumes every
packet whole (umqtt leaves PUBACK/SUBACK bodies for the caller to read, which
desynchronises the stream when a stale ack turns up in ``check_msg``), and
``timeout`` (seconds, None = block) bounds every blocking read.

On a board every name in a loaded module is an interned string for good
(~25 bytes each on the 64-bit unix port, and the agent's names decide whether
the interpreter allocates one more 3.5 KB block of them), so helpers used
once are written out where they are used and the will is one tuple.
"""

import socket

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBACK = const(0x90)
_PINGRESP = const(0xD0)


class MQTTException(Exception):
    """The broker refused (CONNACK/SUBACK code) or sent something unexpected."""


def _str(s):
    # Topics and ids travel as 2-byte length + UTF-8 (MQTT 3.1.1 §1.5.3).
    if isinstance(s, str):
        s = s.encode()
    return len(s).to_bytes(2, "big") + s


def _varlen(n):
    # Remaining length: 7 bits per byte, high bit = more follows (§2.2.3).
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class MQTTClient:
    def __init__(self, client_id, server, port=0, user=None, password=None,
                 keepalive=0, ssl=None):
        if port == 0:
            port = 8883 if ssl else 1883
        self.client_id = client_id
        self.server = server
        self.port = port
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.ssl = ssl
        self.sock = None
        self.cb = None
        self.pid = 0
        self.lw = None  # last will: (topic, msg, retain, qos)
        self.timeout = None
        self._acked = -1
        self._suback = None

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        assert 0 <= qos <= 2 and topic
        self.lw = (topic, msg, retain, qos)

    # -- socket edge -------------------------------------------------------

    def _open(self):
        addr = socket.getaddrinfo(self.server, self.port, 0, socket.SOCK_STREAM)[0][-1]
        sock = socket.socket()
        try:
            sock.settimeout(self.timeout)
            sock.connect(addr)
            try:
                sock.setsockopt(6, 1, 1)  # TCP_NODELAY (Linux and lwIP): see publish
            except Exception:
                pass
            if self.ssl is True:
                import ssl as _ssl
                sock = _ssl.wrap_socket(sock, server_hostname=self.server)
            elif self.ssl:
                sock = self.ssl.wrap_socket(sock, server_hostname=self.server)
        except Exception:
            sock.close()
            raise
        return sock

    def _send(self, data):
        w = getattr(self.sock, "write", None)
        if w is not None:  # MicroPython sockets and TLS streams
            n = w(data)
            if n is None:
                n = 0
            if n < len(data):
                # A short write: the rest goes through a view, since a slice
                # of bytes is a copy and a board heap may have no room for one.
                mv = memoryview(data)
                while n < len(data):
                    k = w(mv[n:])
                    if k is not None:  # None: non-blocking stream with a full buffer
                        n += k
        else:
            self.sock.sendall(data)

    def _recv(self, n):
        buf = b""
        while len(buf) < n:
            r = getattr(self.sock, "read", None)
            chunk = r(n - len(buf)) if r is not None else self.sock.recv(n - len(buf))
            if not chunk:  # b"" is end of stream; None cannot happen in blocking mode
                raise OSError(-1)
            buf += chunk
        return buf

    # -- protocol ----------------------------------------------------------

    def connect(self, clean_session=True):
        self.sock = self._open()
        flags = 0x02 if clean_session else 0
        payload = _str(self.client_id)
        lw = self.lw
        if lw:
            flags |= 0x04 | lw[3] << 3 | (0x20 if lw[2] else 0)
            payload += _str(lw[0]) + _str(lw[1])
        if self.user is not None:
            flags |= 0x80
            payload += _str(self.user)
            if self.pswd is not None:
                flags |= 0x40
                payload += _str(self.pswd)
        payload = b"\x00\x04MQTT\x04" + bytes((flags,)) + self.keepalive.to_bytes(2, "big") + payload
        self._send(b"\x10" + _varlen(len(payload)) + payload)
        ack = self._recv(4)
        if ack[0] != 0x20 or ack[1] != 2:
            raise MQTTException("expected CONNACK, got %02x" % ack[0])
        if ack[3] != 0:
            raise MQTTException(ack[3])
        return ack[2] & 1

    def disconnect(self):
        try:
            self._send(b"\xe0\x00")
        finally:
            self.sock.close()
            self.sock = None

    def ping(self):
        self._send(b"\xc0\x00")

    def publish(self, topic, msg, retain=False, qos=0):
        if qos not in (0, 1):
            raise MQTTException("QoS %d not supported" % qos)
        if isinstance(msg, str):
            msg = msg.encode()
        body = _str(topic)
        if qos:
            pid = self.pid = self.pid % 0xFFFF + 1  # 1..65535; 0 is not a valid packet id
            body += pid.to_bytes(2, "big")
        head = bytes((_PUBLISH | qos << 1 | (1 if retain else 0),)) + _varlen(len(body) + len(msg)) + body
        # Two writes, the payload not copied (on a board heap the copy is the
        # largest block a publish needs): TCP_NODELAY, set in _open, keeps
        # the second from waiting for the broker's delayed ACK (~40 ms).
        self._send(head)
        self._send(msg)
        if qos:
            while self._acked != pid:
                self.wait_msg()

    def subscribe(self, topic, qos=0):
        assert self.cb is not None, "subscribe callback is not set"
        pid = self.pid = self.pid % 0xFFFF + 1
        body = pid.to_bytes(2, "big") + _str(topic) + bytes((qos,))
        self._send(b"\x82" + _varlen(len(body)) + body)
        while True:
            self.wait_msg()
            if self._suback and self._suback[0] == pid:
                rc = self._suback[1]
                self._suback = None
                if rc == 0x80:
                    raise MQTTException("subscription to %s refused" % topic)
                return

    def wait_msg(self):
        """Read and handle one packet; None when a non-blocking read found none."""
        try:
            first = self.sock.read(1) if hasattr(self.sock, "read") else self.sock.recv(1)
        except OSError as exc:
            if exc.args and exc.args[0] in (11, 35):  # EAGAIN: nothing waiting
                first = None
            else:
                raise
        finally:
            # TLS streams on MicroPython have setblocking but not always settimeout.
            if self.timeout is None:
                self.sock.setblocking(True)
            else:
                self.sock.settimeout(self.timeout)
        if first is None:
            return None
        if first == b"":
            raise OSError(-1)
        op = first[0]
        n = 0  # remaining length: 7 bits per byte, at most 4 bytes (§2.2.3)
        shift = 0
        while True:
            b = self._recv(1)[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MQTTException("remaining length longer than 4 bytes")
        body = self._recv(n) if n else b""
        kind = op & 0xF0
        if kind == _PINGRESP:
            return None
        if kind == _PUBACK:
            self._acked = int.from_bytes(body[:2], "big")
        elif kind == _SUBACK:
            self._suback = (int.from_bytes(body[:2], "big"), body[2])
        elif kind == _PUBLISH:
            tlen = int.from_bytes(body[:2], "big")
            topic = body[2:2 + tlen]
            pos = 2 + tlen
            qos = (op >> 1) & 3
            if qos:
                pid = body[pos:pos + 2]
                pos += 2
            if self.cb is not None:
                self.cb(topic, body[pos:])
            if qos == 1:
                self._send(b"\x40\x02" + pid)
            elif qos == 2:
                raise MQTTException("QoS 2 message received; not supported")
        return op

    def check_msg(self):
        """Handle one pending packet if there is one, without blocking."""
        self.sock.setblocking(False)
        return self.wait_msg()
