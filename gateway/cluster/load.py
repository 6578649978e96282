"""MQTT QoS 1 publishers that fail over between cluster nodes, and know exactly what was acknowledged.

A publisher sends its messages in windows and counts a window as
acknowledged only when every PUBACK of it arrived on one connection
(``Connection.wait_acked``).  When its node goes away it connects to the next
node and sends the unfinished window again, as a device does: at least once,
so the store may hold a message twice, never a PUBACKed one zero times.
Used by bench/broker_cluster.py and the cluster tests to check, message by
message, what a node SIGKILL does.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from gateway.mqtt_client import Connection, MQTTError


@dataclass
class PublisherStats:
    acked: list[int] = field(default_factory=list)  # indices of messages PUBACKed
    reconnects: int = 0
    error: str | None = None


class FailoverPublisher(threading.Thread):
    def __init__(
        self,
        ports: list[int],
        first: int,
        client_id: str,
        messages: list[tuple[str, bytes]],
        stop: threading.Event,
        window: int = 50,
        give_up_s: float = 120.0,
        pause_s: float = 0.0,
    ) -> None:
        super().__init__(name="surge-pub-%s" % client_id, daemon=True)
        self.ports = ports
        self.node = first % len(ports)
        self.client_id = client_id
        self.messages = messages
        self.stop_event = stop
        self.window = window
        self.give_up_s = give_up_s
        self.pause_s = pause_s  # between windows: a device's pace rather than a flood
        self.stats = PublisherStats()

    def _connect(self) -> Connection:
        deadline = time.monotonic() + self.give_up_s
        while True:
            conn = Connection(
                "127.0.0.1",
                self.ports[self.node],
                self.client_id,
                version="3.1.1",
                clean_start=True,
                keepalive=10,
                ack_timeout=20.0,
                max_inflight=self.window,
            )
            try:
                conn.connect(timeout=5.0)
                return conn
            except (MQTTError, OSError) as exc:
                conn.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        "no cluster node took the connection for %.0f s: %s" % (self.give_up_s, exc)
                    ) from None
                self.node = (self.node + 1) % len(self.ports)
                self.stats.reconnects += 1
                time.sleep(0.2)

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # reported by the caller, never silent
            self.stats.error = "%s: %s" % (type(exc).__name__, exc)

    def _run(self) -> None:
        conn = self._connect()
        i = 0
        try:
            while i < len(self.messages) and not self.stop_event.is_set():
                chunk = self.messages[i : i + self.window]
                try:
                    conn.publish([(t, p, False) for t, p in chunk])
                    done = conn.wait_acked(20.0)
                except (MQTTError, OSError):
                    done = False
                if done:
                    self.stats.acked.extend(range(i, i + len(chunk)))
                    i += len(chunk)
                    if self.pause_s:
                        self.stop_event.wait(self.pause_s)
                    continue
                # Not every PUBACK came: the node is gone or stuck. Another node, the same window again.
                conn.close()
                self.node = (self.node + 1) % len(self.ports)
                self.stats.reconnects += 1
                conn = self._connect()
        finally:
            try:
                conn.disconnect()
            except (MQTTError, OSError):
                conn.close()


def run_publishers(pubs: list[FailoverPublisher], timeout: float) -> float:
    """Start them, wait (bounded) until all finish; the seconds it took."""
    t = time.monotonic()
    for p in pubs:
        p.start()
    for p in pubs:
        p.join(max(0.0, timeout - (time.monotonic() - t)))
    alive = [p.name for p in pubs if p.is_alive()]
    if alive:
        raise RuntimeError("publishers still running after %.0f s: %s" % (timeout, ", ".join(alive)))
    errors = [p.stats.error for p in pubs if p.stats.error]
    if errors:
        raise RuntimeError("publisher failed: %s" % errors[0])
    return time.monotonic() - t
