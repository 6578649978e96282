"""MQTT link of the agent on CPython, over paho-mqtt 2.x (host side).

Same surface as agent.link (connect / publish / poll / close, OSError when
the connection is gone) so agent.runner drives either.  Single-threaded:
the agent calls ``loop()`` itself, and each connection gets a fresh paho
client, so paho never re-sends a QoS 1 message on its own after a
reconnect (the outbox replays it, exactly once per connection).
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any, Callable, Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode


class Link:
    def __init__(
        self,
        client_id: str,
        host: str,
        port: int,
        user: str | None = None,
        password: str | None = None,
        keepalive: int = 60,
        tls: bool = False,
        ca_file: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.client_id = client_id
        self.host = host
        self.port = port
        self.user = user
        self._password = password
        self.keepalive = keepalive
        self.tls = tls
        self.ca_file = ca_file
        self.timeout = timeout
        self.client: mqtt.Client | None = None
        self.on_message: Callable[[str, bytes], None] | None = None
        self._connack: ReasonCode | None = None
        self._up = False
        self._got = False

    def __repr__(self) -> str:
        return "Link(%s:%d)" % (self.host, self.port)

    @property
    def connected(self) -> bool:
        return self.client is not None and self._up

    # paho callbacks (VERSION2 signatures)
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        self._connack = rc
        self._up = not rc.is_failure

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        self._up = False

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._got = True
        if self.on_message is not None:
            self.on_message(msg.topic, bytes(msg.payload))

    def _loop(self, seconds: float) -> None:
        assert self.client is not None
        rc = self.client.loop(timeout=seconds)
        if rc != mqtt.MQTT_ERR_SUCCESS or not self._up:
            self.close(False)
            raise ConnectionError("connection lost (%s)" % mqtt.error_string(rc))

    def connect(self, will_topic: str, subscriptions: Iterable[str], retained: Iterable[tuple[str, bytes]]) -> None:
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True, protocol=mqtt.MQTTv311
        )
        c.will_set(will_topic, b"offline", qos=1, retain=True)
        if self.user is not None:
            c.username_pw_set(self.user, self._password)
        if self.tls:
            c.tls_set(ca_certs=self.ca_file, cert_reqs=ssl.CERT_REQUIRED)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self._connack = None
        self._up = False
        c.connect(self.host, self.port, self.keepalive)  # raises OSError when unreachable
        sock = c.socket()
        if isinstance(sock, socket.socket):
            # Small packets back to back (probe chunks, then a QoS 1 report)
            # would otherwise wait ~40 ms each for a delayed ACK (Nagle).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client = c
        deadline = time.monotonic() + self.timeout
        while self._connack is None:
            if time.monotonic() > deadline:
                self.close(False)
                raise TimeoutError("no CONNACK within %.0f s" % self.timeout)
            rc = c.loop(timeout=0.1)
            if rc != mqtt.MQTT_ERR_SUCCESS and self._connack is None:
                self.close(False)
                raise ConnectionError("broker closed the connection (%s)" % mqtt.error_string(rc))
        if self._connack.is_failure:
            reason = str(self._connack)
            self.close(False)
            raise ConnectionRefusedError("broker refused the connection: %s" % reason)
        for t in subscriptions:
            c.subscribe(t, qos=1)
        for t, m in retained:
            self.publish(t, m, 1, True)

    def publish(self, topic: str, data: bytes, qos: int = 1, retain: bool = False) -> None:
        if self.client is None or not self._up:
            raise ConnectionError("not connected")
        # A copy: paho may keep a payload queued, and agent.bwprobe reuses its buffer.
        info = self.client.publish(topic, bytes(data), qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.close(False)
            raise ConnectionError("publish failed (%s)" % mqtt.error_string(info.rc))
        if qos == 0:
            return
        deadline = time.monotonic() + self.timeout
        while not info.is_published():
            if time.monotonic() > deadline:
                self.close(False)
                raise TimeoutError("no PUBACK within %.0f s" % self.timeout)
            self._loop(0.05)

    def poll(self, wait_ms: int) -> None:
        """Serve the connection (incoming messages, keepalive) for up to ``wait_ms``."""
        end = time.monotonic() + wait_ms / 1000
        self._got = False
        while self.client is not None and not self._got:  # a message may need an answer
            left = end - time.monotonic()
            if left <= 0:
                return
            # Short slices: paho sends PINGREQ only from inside loop().
            self._loop(min(left, 0.5))

    def close(self, clean: bool = True) -> None:
        c = self.client
        self.client = None
        self._up = False
        if c is None:
            return
        try:
            if clean:
                c.disconnect()
                c.loop(timeout=0.1)
            else:
                sock = c.socket()
                if sock is not None:
                    sock.close()
        except Exception:
            pass
