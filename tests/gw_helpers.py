"""Helpers for gateway tests: signed reports from real device keys, MQTT clients."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from surge_protocol import claims as C
from agent import keyfile, report


class Device:
    """A device key plus the report chain it would produce (seq, prev)."""

    def __init__(self, fleet: str = "demo", board: str = "esp32") -> None:
        self.key = keyfile.generate()
        self.fleet = fleet
        self.board = board
        self.seq = 0
        self.boot = 1
        self.prev: bytes | None = None

    @property
    def id(self) -> str:
        return self.key.device_id

    @property
    def topic(self) -> str:
        return "surge/v1/%s/%s/report" % (self.fleet, self.id)

    def report(self, **overrides: Any) -> bytes:
        args: dict[str, Any] = dict(
            seq=self.seq,
            bootcount=self.boot,
            uptime=10 + self.seq,
            interval=60,
            prev=self.prev,
            storage=(4_000_000, 1_000_000),
            net=(1000, 2000),
            bw=(10_000, 20_000),
            rssi=-60,
        )
        args.update(overrides)
        data = report.sign_report(self.key.secret, self.key.public, report.build_claims(**args))
        self.seq = args["seq"] + 1
        self.prev = C.prev_hash(data)
        return data


class Collector:
    """A paho subscriber that records (topic, payload) of everything it sees."""

    def __init__(self, port: int, topic: str = "surge/v1/#") -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="collector-%d" % id(self))
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, 1)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def of_kind(self, kind: str) -> list[tuple[str, bytes]]:
        with self.lock:
            return [m for m in self.messages if m[0].rsplit("/", 1)[-1] == kind]

    def wait(self, pred: Callable[[], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.05)
        return pred()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pub-%d" % time.monotonic_ns())
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client
