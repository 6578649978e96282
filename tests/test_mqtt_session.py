"""The QoS 1 session rules (gateway/mqtt_session.py), without a socket: packets in, decisions out."""

from __future__ import annotations

import pytest

from gateway.mqtt_codec import MQTTError, encode_publish
from gateway.mqtt_session import OutboundSession


def publish(s: OutboundSession, n: int) -> list[int]:
    pids = []
    for i in range(n):
        pid = s.next_id()
        s.track(pid, encode_publish("t", b"%d" % i, 1, False, False, pid, True))
        s.written()
        pids.append(pid)
    return pids


def test_ids_wrap_and_skip_those_in_flight() -> None:
    s = OutboundSession(10)
    s._last_id = 65533
    assert publish(s, 3) == [65534, 65535, 1]
    s.acked(65534, 0)
    s.acked(1, 0)
    s._last_id = 65534
    assert s.next_id() == 1  # 65535 is still in flight
    s.inflight = {pid: b"" for pid in range(1, 65536)}
    with pytest.raises(MQTTError, match="no packet id is free"):
        s.next_id()


def test_window_is_ours_or_the_brokers_receive_maximum() -> None:
    s = OutboundSession(100)
    s.connected(20)
    assert s.window == 20
    publish(s, 20)
    assert s.window_full
    s.acked(1, 0)
    assert not s.window_full
    s.connected(None)
    assert s.window == 100 and s.outstanding == 0
    with pytest.raises(ValueError):
        OutboundSession(0)


def test_acks_end_a_publish_once_and_failures_are_recorded() -> None:
    s = OutboundSession(10)
    publish(s, 3)
    assert s.acked(2, 0x87)  # refused by the broker: acknowledged, not resent
    assert not s.acked(2, 0)  # a duplicate PUBACK changes nothing
    assert not s.acked(9, 0)  # nor does one for an id never used
    assert list(s.rejected) == [(2, 0x87)] and sorted(s.inflight) == [1, 3] and s.outstanding == 2


def test_resend_after_reconnect_dup_same_ids_in_order_once() -> None:
    s = OutboundSession(10)
    pids = publish(s, 4)
    s.acked(pids[1], 0)
    assert list(s.resend()) == []  # not on the connection they were sent on
    s.connected(None)
    again = s.resend()
    first = next(again)
    assert first == bytes((s.inflight[pids[0]][0] | 0x08,)) + s.inflight[pids[0]][1:]
    s.acked(pids[2], 0)  # acknowledged while the caller waited: skipped, not sent twice
    rest = list(again)
    assert rest == [bytes((s.inflight[pids[3]][0] | 0x08,)) + s.inflight[pids[3]][1:]]
    assert list(s.resend()) == []  # once per connection
    s.connected(None)
    assert len(list(s.resend())) == 2
