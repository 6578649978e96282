"""The client side of an MQTT QoS 1 session: outgoing publishes in flight, without a socket.

Every rule about our unacknowledged publishes lives here, so that it can be
tested with packets in and decisions out (tests/test_mqtt_session.py):

* packet ids run 1..65535, wrap, and skip ids still unacknowledged;
* a publish stays in flight, as its encoded packet, until its PUBACK, across
  reconnects; a PUBACK with a failure reason code (v5) still ends it (the
  broker decided: resending would not help) and is recorded in ``rejected``;
* at most ``window`` publishes are written and unacknowledged on one
  connection: ``max_inflight``, lowered by the broker's Receive Maximum;
* after a reconnect every publish still in flight is written once more, with
  DUP=1, the same packet id, in the original order; MQTT allows a resend only
  then, so at most once per connection.

``gateway/mqtt_client.py``'s ``Connection`` owns the socket and asks this
object what to do.
"""

from __future__ import annotations

import collections
from typing import Iterator

from gateway.mqtt_codec import MQTTError

MAX_PACKET_ID = 65535
_DUP = 0x08  # the DUP flag in a PUBLISH's fixed header


class OutboundSession:
    """Our QoS 1 publishes in flight (see the module docstring)."""

    def __init__(self, max_inflight: int) -> None:
        if not 1 <= max_inflight <= MAX_PACKET_ID:
            raise ValueError("max_inflight must be 1..65535, not %d" % max_inflight)
        self.max_inflight = max_inflight
        self.window = max_inflight
        # Packet id -> encoded PUBLISH (DUP=0), in the order first sent.
        self.inflight: dict[int, bytes] = {}
        self.outstanding = 0  # of those, how many were written on this connection
        self.need_resend = False
        self._last_id = 0
        # Failed PUBACKs (v5), latest last: (packet id, reason code).  Bounded:
        # a caller that never looks must not leak.
        self.rejected: collections.deque[tuple[int, int]] = collections.deque(maxlen=1000)

    def connected(self, receive_maximum: int | None) -> None:
        """A new connection is up (CONNACK): its window, and what must be written again."""
        self.window = min(self.max_inflight, receive_maximum or MAX_PACKET_ID)
        self.outstanding = 0
        self.need_resend = bool(self.inflight)

    def next_id(self) -> int:
        """A free packet id for a new publish or subscription."""
        if len(self.inflight) >= MAX_PACKET_ID:
            raise MQTTError("65535 publishes are unacked, no packet id is free: wait_acked() first")
        pid = self._last_id
        while True:
            pid = pid + 1 if pid < MAX_PACKET_ID else 1
            if pid not in self.inflight:
                self._last_id = pid
                return pid

    def track(self, pid: int, packet: bytes) -> None:
        """``packet`` (a QoS 1 PUBLISH with id ``pid``) is in flight until its PUBACK."""
        self.inflight[pid] = packet

    @property
    def window_full(self) -> bool:
        """No more may be written until a PUBACK comes."""
        return self.outstanding >= self.window

    def written(self) -> None:
        """One publish in flight was written on this connection."""
        self.outstanding += 1

    def acked(self, pid: int, reason_code: int) -> bool:
        """A PUBACK arrived; False if ``pid`` was not in flight (a duplicate or stray PUBACK)."""
        if self.inflight.pop(pid, None) is None:
            return False
        if self.outstanding:
            self.outstanding -= 1
        if reason_code >= 0x80:
            self.rejected.append((pid, reason_code))
        return True

    def resend(self) -> Iterator[bytes]:
        """The packets to write again after a reconnect (DUP=1), oldest first; nothing if already done.

        Lazy: a publish acknowledged while the caller waits for the window
        (PUBACKs read between two packets) is skipped, not sent twice.
        """
        if not self.need_resend:
            return
        self.need_resend = False
        for pid, pkt in list(self.inflight.items()):
            if pid in self.inflight:
                yield bytes((pkt[0] | _DUP,)) + pkt[1:]
