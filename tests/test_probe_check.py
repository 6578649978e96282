"""The gateway's probe-run checker (gateway/probe_check.py), sans-I/O: chunks made by the agent's own
bwprobe.message, arrival times chosen by the test."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from agent import bwprobe
from gateway import probe_check as P
from gateway.probe_check import ProbeTracker

DEV, OTHER, FLEET = "00112233445566aa", "00112233445566bb", "lab"


def run_msgs(seq: int, total: int = 2048, nonce: bytes | None = None) -> list[bytes]:
    nonce = nonce or os.urandom(16)
    count = (total + bwprobe.CHUNK - 1) // bwprobe.CHUNK
    return [bytes(bwprobe.message(nonce, seq, i, count, total)) for i in range(count)]


def tracker(**kw: object) -> ProbeTracker:
    t = ProbeTracker(**kw)  # type: ignore[arg-type]
    t.add_device(DEV, FLEET, 0, 0.0)
    t.add_device(OTHER, FLEET, 0, 0.0)
    return t


def feed_all(t: ProbeTracker, msgs: list[bytes], t0: float, step: float, dev: str = DEV) -> list[str | None]:
    return [t.feed(dev, m, t0 + i * step) for i, m in enumerate(msgs)]


def test_honest_run_is_checked_with_the_rate_defined_in_the_protocol() -> None:
    t = tracker()
    msgs = run_msgs(1, 4096)
    assert feed_all(t, msgs, 10.0, 0.002) == [None] * 8
    r = t.claim(DEV, FLEET, 1, 10.02)
    assert r is not None and r.outcome == P.CHECKED and r.chunks == 8
    after_first = sum(len(m) for m in msgs[1:])
    # 7 chunks after the first over 7 x 2 ms.
    assert r.bw_up == int(after_first / 0.014)
    assert r.bytes == sum(len(m) for m in msgs) and r.elapsed_us == 14000
    counts = t.drain_counts()
    assert counts[(FLEET, "run", "checked")] == 1 and counts[(FLEET, "chunk", "checked")] == 8


def test_a_run_read_in_one_go_is_timed_at_the_resolution_floor() -> None:
    t = tracker()
    msgs = run_msgs(1)
    feed_all(t, msgs, 5.0, 0.0)
    r = t.claim(DEV, FLEET, 1, 5.0)
    assert r is not None and r.bw_up == int(sum(len(m) for m in msgs[1:]) / P.RESOLUTION_S)


def test_no_run_for_a_report_gives_none() -> None:
    t = tracker()
    assert t.claim(DEV, FLEET, 1, 1.0) is None


def test_forged_chunk_fails_the_run() -> None:
    t = tracker()
    msgs = run_msgs(1)
    forged = bytearray(msgs[2])
    forged[-1] ^= 1
    msgs[2] = bytes(forged)
    assert feed_all(t, msgs, 1.0, 0.001) == [None, None, "invalid_chunk", "invalid_chunk"]
    r = t.claim(DEV, FLEET, 1, 1.1)
    assert r is not None and r.outcome == "invalid_chunk" and r.bw_up is None


def test_another_devices_nonce_is_refused() -> None:
    t = tracker()
    nonce = os.urandom(16)
    feed_all(t, run_msgs(1, nonce=nonce), 1.0, 0.001)
    assert t.feed(OTHER, run_msgs(1, nonce=nonce)[0], 1.1) == "foreign_nonce"
    assert t.claim(OTHER, FLEET, 1, 1.2) is None
    r = t.claim(DEV, FLEET, 1, 1.2)
    assert r is not None and r.outcome == P.CHECKED


def test_replayed_run_is_refused() -> None:
    t = tracker()
    old = run_msgs(1)
    feed_all(t, old, 1.0, 0.001)
    assert t.claim(DEV, FLEET, 1, 1.1) is not None
    # The same run again (old nonce), for the next report: refused, nothing to claim.
    assert set(feed_all(t, old, 2.0, 0.001)) == {"replayed"}
    # A fresh nonce for a seq already accepted is a replay too.
    assert set(feed_all(t, run_msgs(0), 3.0, 0.001)) == {"replayed"}
    # A device that probes waits for its run (it may still be on the other connection) ...
    r = t.claim(DEV, FLEET, 2, 3.1, boot=1)
    assert r is not None and r.outcome == P.PENDING
    # ... which resolves as absent when its next run begins without one for this report.
    feed_all(t, run_msgs(3), 4.0, 0.001)
    assert [(b, r.seq, r.outcome) for _, b, r in t.resolved] == [(1, 2, P.ABSENT)]


def test_run_read_after_its_report_is_still_tied_to_it_within_the_slack() -> None:
    t = tracker()
    feed_all(t, run_msgs(1), 1.0, 0.001)
    t.claim(DEV, FLEET, 1, 1.1)
    # Report 2 is read before any chunk of its run (two connections).
    assert t.claim(DEV, FLEET, 2, 2.0, boot=1).outcome == P.PENDING  # type: ignore[union-attr]
    feed_all(t, run_msgs(2), 2.001, 0.001)
    ((_, boot, r),) = t.resolved
    assert boot == 1 and r.outcome == P.CHECKED and r.bw_up


def test_missing_and_reordered_chunks() -> None:
    t = tracker()
    msgs = run_msgs(1)
    assert feed_all(t, [msgs[0], msgs[2], msgs[3]], 1.0, 0.001) == [None, "missing_chunks", "missing_chunks"]
    r = t.claim(DEV, FLEET, 1, 1.1)
    assert r is not None and r.outcome == "missing_chunks"
    msgs = run_msgs(2)
    assert feed_all(t, [msgs[0], msgs[1], msgs[0]], 2.0, 0.001) == [None, None, "out_of_order"]
    r = t.claim(DEV, FLEET, 2, 2.1)
    assert r is not None and r.outcome == "out_of_order"


def test_report_arriving_mid_run_waits_for_the_run_and_orders_it_by_arrival_times() -> None:
    t = tracker()
    # The report is read while the run is still arriving (two connections): the
    # claim is pending, and the run resolves when its last chunk comes.
    msgs = run_msgs(1)
    feed_all(t, msgs[:2], 1.0, 0.001)
    r = t.claim(DEV, FLEET, 1, 1.002, boot=3)
    assert r is not None and r.outcome == P.PENDING and r.bw_up is None
    assert feed_all(t, msgs[2:], 1.003, 0.001) == [None, None]
    ((dev, boot, res),) = t.resolved
    assert (dev, boot, res.outcome) == (DEV, 3, P.CHECKED) and res.bw_up
    t.resolved.clear()
    # The same, but the run ends well after its report: out of order, no rate.
    msgs = run_msgs(2)
    feed_all(t, msgs[:2], 2.0, 0.001)
    assert t.claim(DEV, FLEET, 2, 2.002, boot=3).outcome == P.PENDING  # type: ignore[union-attr]
    feed_all(t, msgs[2:], 2.01 + P.ORDER_SLACK_S, 0.001)
    ((_, _, res),) = t.resolved
    assert res.outcome == "out_of_order" and res.bw_up is None
    t.resolved.clear()
    # A pending run that never completes resolves as missing_chunks when it goes stale.
    msgs = run_msgs(3)
    feed_all(t, msgs[:1], 3.0, 0.001)
    t.claim(DEV, FLEET, 3, 3.001)
    t.sweep(3.0 + P.RUN_TIMEOUT_S + 1)
    ((_, _, res),) = t.resolved
    assert res.outcome == "missing_chunks"
    # A complete run whose last chunk came well after its report arrived.
    msgs = run_msgs(4)
    feed_all(t, msgs, 5.0, 0.001)
    r = t.claim(DEV, FLEET, 4, 5.0 - P.ORDER_SLACK_S - 0.1)
    assert r is not None and r.outcome == "out_of_order" and r.bw_up is None
    # A run that starts after its report was accepted.
    assert t.feed(DEV, run_msgs(4)[0], 6.0) == "out_of_order"
    counts = t.drain_counts()
    assert counts[(FLEET, "run", "out_of_order")] == 2 and counts[(FLEET, "run", "checked")] == 1


def test_oversize_malformed_and_single_chunk_runs() -> None:
    t = tracker(max_chunk_bytes=1000)
    assert t.feed(DEV, b"\x00" * 1001, 1.0) == "oversize"
    assert t.feed(DEV, b"\xff\x00garbage", 1.0) == "malformed"
    assert t.feed(DEV, bytes(bwprobe.message(os.urandom(16), 1, 2, 2, 1024)[:-1]), 1.0) == "malformed"
    feed_all(t, run_msgs(1, 100), 2.0, 0.001)
    r = t.claim(DEV, FLEET, 1, 2.1)
    assert r is not None and r.outcome == "too_short" and r.bw_up is None


def test_flood_is_rate_limited_per_device() -> None:
    t = tracker(rate_per_s=10.0, burst=20)
    msg = run_msgs(1)[0]
    results = [t.feed(DEV, msg, 1.0) for _ in range(100)]
    assert results.count("rate_limited") == 100 - 20
    # Another device is untouched by the first one's flood.
    assert feed_all(t, run_msgs(1), 1.0, 0.001, dev=OTHER) == [None] * 4
    # Tokens come back at the configured rate.
    assert t.feed(DEV, msg, 2.0) != "rate_limited"


def test_unclaimed_and_stale_runs_are_counted_once() -> None:
    t = tracker()
    feed_all(t, run_msgs(1)[:2], 1.0, 0.001)  # abandoned midway
    feed_all(t, run_msgs(2), 2.0, 0.001)  # complete, its report never comes
    t.claim(DEV, FLEET, 3, 3.0)
    feed_all(t, run_msgs(4)[:1], 4.0, 0.001)
    t.sweep(4.0 + P.RUN_TIMEOUT_S + 1)
    counts = t.drain_counts()
    assert counts[(FLEET, "run", "missing_chunks")] == 2 and counts[(FLEET, "run", "unclaimed")] == 1
    assert sum(n for (f, k, o), n in counts.items() if k == "run") == 3


def test_tracked_devices_are_bounded() -> None:
    t = ProbeTracker(max_devices=50)
    for i in range(200):
        t.add_device("%016x" % i, FLEET, -1, float(i))
    assert len(t.devices) == 50


@settings(max_examples=300, deadline=None)
@given(data=st.lists(st.binary(max_size=600), max_size=30), order=st.permutations(list(range(4))))
def test_any_input_never_raises_and_only_an_in_order_genuine_run_is_checked(
    data: list[bytes], order: list[int]
) -> None:
    t = tracker()
    for i, d in enumerate(data):
        assert t.feed(DEV, d, 1.0 + i * 0.001) in P.CHUNK_REASONS
    msgs = run_msgs(5)
    feed_all(t, [msgs[i] for i in order], 2.0, 0.001)
    r = t.claim(DEV, FLEET, 5, 2.1)
    assert r is not None
    assert (r.outcome == P.CHECKED) == (order == sorted(order))
    assert (r.bw_up is not None) == (r.outcome == P.CHECKED)
