"""Bandwidth probe runs, checked by the gateway (sans-I/O; docs/protocol.md §2.6).

A device sends a run of probe chunks, CBOR ``[nonce, seq, index, count,
data]``, before the report with the same ``seq``.  :class:`ProbeTracker`
takes each chunk as ``(device id, fleet, payload, arrival time)``, with the
arrival time read by the caller where the message came off the socket, and
keeps per device at most one run in progress plus a few finished runs
waiting for their report.  When ingest accepts report S it calls
:meth:`ProbeTracker.claim`, which hands back the run for S: ``checked`` with
the measured rate, or the reason it was refused.

Rate (normative, see the protocol): the MQTT payload bytes of every chunk
after the first, over the time from the first chunk's arrival to the last's,
that time floored at :data:`RESOLUTION_S`.  The first chunk only starts the
clock: its bytes were on the way before the clock started.

Every run is counted exactly once, when it ends: at the claim of its seq, or
when it is dropped unclaimed (superseded, stale, or its report went elsewhere).
Dropped chunks are counted on their own, by reason.  Nothing here does I/O or
reads a clock; the caller supplies times, enrollment and the last seq.
"""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass, field
from typing import Any

import cbor2

# Limits (docs/protocol.md §2.6, docs/operators.md).
MAX_CHUNK_BYTES = 16384
# The agent's largest run is 1 MiB (bw_probe_bytes) in 256-byte chunks.
MAX_CHUNKS = 4096
# Time resolution of a run: a run shorter than this is timed as this long, so
# a run the gateway cannot time (all chunks read in one socket read) attests
# at most its bytes per millisecond rather than an unbounded figure.
RESOLUTION_S = 0.001
# A run that completes after its report arrived is out of order.  The chunks
# and the report come over two gateway connections (gateway/probe_listener.py),
# read by two threads; this much slack covers the threads' scheduling.
ORDER_SLACK_S = 0.5
# A run still incomplete this long after its first chunk ends as missing_chunks.
RUN_TIMEOUT_S = 60.0
USED_NONCES = 16  # per device: a replayed run reuses one of these
DONE_RUNS = 8  # finished runs per device waiting for their report
NONCE_OWNERS = 65536  # recent nonces -> device, to spot another device's nonce
MAX_DEVICES = 100_000  # tracked devices (least recently seen dropped first)

# Run outcomes (the `probe_runs.outcome` column and the runs metric).
CHECKED = "checked"
PENDING = "pending"  # only in probe_runs: the report came before its run was all read
ABSENT = "absent"  # only in probe_runs: a probing device's report had no run after all
RUN_OUTCOMES = (CHECKED, "invalid_chunk", "missing_chunks", "out_of_order", "too_short", "unclaimed")
# Reasons a chunk is dropped (the chunks metric).
CHUNK_REASONS = (
    "oversize",
    "rate_limited",
    "malformed",
    "bad_topic",
    "unknown_device",
    "foreign_nonce",
    "replayed",
    "invalid_chunk",
    "missing_chunks",
    "out_of_order",
)


_SHA256 = hashlib.sha256
# u32be(j) for every block of the largest chunk: the check runs once per chunk
# at the probe's full rate, so nothing is built per block that can be built once.
_U32 = tuple(j.to_bytes(4, "big") for j in range(MAX_CHUNK_BYTES // 32 + 1))


def stream(nonce: bytes, index: int, size: int) -> bytes:
    """The first ``size`` bytes of chunk ``index``'s stream (protocol §2.6)."""
    seed = nonce + index.to_bytes(4, "big")
    blocks = (size + 31) // 32
    if blocks <= len(_U32):
        return b"".join([_SHA256(seed + u).digest() for u in _U32[:blocks]])[:size]
    return b"".join([_SHA256(seed + j.to_bytes(4, "big")).digest() for j in range(blocks)])[:size]


@dataclass(frozen=True, slots=True)
class Chunk:
    nonce: bytes
    seq: int
    index: int
    count: int
    data: bytes


def parse_chunk(payload: bytes) -> Chunk | None:
    """The chunk in ``payload``, or None when it is not a well-formed probe chunk."""
    try:
        doc = cbor2.loads(payload)
    except Exception:  # cbor2 raises several types on garbage; all mean the same here
        return None
    if type(doc) is not list or len(doc) != 5:
        return None
    nonce, seq, index, count, data = doc
    if type(nonce) is not bytes or len(nonce) != 16 or type(data) is not bytes:
        return None
    if type(seq) is not int or type(index) is not int or type(count) is not int:
        return None
    if seq < 0 or not 1 <= count <= MAX_CHUNKS or not 0 <= index < count:
        return None
    return Chunk(nonce, seq, index, count, data)


@dataclass(frozen=True, slots=True)
class RunResult:
    """One finished run: what a report's attestation is built from."""

    seq: int
    outcome: str  # CHECKED or a failure reason (RUN_OUTCOMES)
    bw_up: int | None  # bytes/s, only when checked
    bytes: int  # payload bytes of the run's valid chunks
    chunks: int  # valid chunks
    elapsed_us: int  # first to last arrival
    last_at: float  # arrival of the last valid chunk


def _ordered(result: RunResult, report_at: float) -> RunResult:
    """A checked run that ended more than ORDER_SLACK_S after its report arrived is out of order."""
    if result.outcome == CHECKED and result.last_at > report_at + ORDER_SLACK_S:
        return RunResult(
            result.seq, "out_of_order", None, result.bytes, result.chunks, result.elapsed_us, result.last_at
        )
    return result


@dataclass(slots=True)
class _Run:
    nonce: bytes
    seq: int
    count: int
    first_at: float
    last_at: float
    next_index: int = 0
    bytes: int = 0
    after_first: int = 0
    failed: str | None = None
    counted: bool = False  # its outcome is counted; its later chunks are refused as its reason
    claimed: tuple[int, float] | None = None  # (boot, report arrival) of a report that came mid-run

    def result(self, outcome: str | None = None) -> RunResult:
        elapsed = self.last_at - self.first_at
        complete = self.failed is None and self.next_index == self.count
        if outcome is None:
            outcome = self.failed or (
                CHECKED if complete and self.count > 1 else "too_short" if complete else "missing_chunks"
            )
        rate = int(self.after_first / max(elapsed, RESOLUTION_S)) if outcome == CHECKED else None
        return RunResult(self.seq, outcome, rate, self.bytes, self.next_index, round(elapsed * 1e6), self.last_at)


@dataclass(slots=True)
class _Device:
    fleet: str
    claimed_seq: int  # highest seq of an accepted report (-1: none)
    tokens: float
    updated: float
    run: _Run | None = None
    done: "collections.OrderedDict[int, RunResult]" = field(default_factory=collections.OrderedDict)
    used: "collections.OrderedDict[bytes, None]" = field(default_factory=collections.OrderedDict)
    # seq -> (boot, report arrival) of accepted reports whose run had not started yet
    awaiting: "collections.OrderedDict[int, tuple[int, float]]" = field(default_factory=collections.OrderedDict)


class ProbeTracker:
    """Per-device probe runs, rate limits and counts.  Not thread-safe: callers lock."""

    def __init__(
        self,
        rate_per_s: float = 100.0,
        burst: int = MAX_CHUNKS,
        max_chunk_bytes: int = MAX_CHUNK_BYTES,
        max_devices: int = MAX_DEVICES,
    ) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.max_chunk_bytes = max_chunk_bytes
        self.max_devices = max_devices
        self.devices: collections.OrderedDict[str, _Device] = collections.OrderedDict()
        self.owners: collections.OrderedDict[bytes, str] = collections.OrderedDict()
        # (fleet, "run" | "chunk", outcome) -> count since the last drain_counts().
        self.counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        # (device id, boot, result) of PENDING claims that have ended, for the caller to store.
        self.resolved: list[tuple[str, int, RunResult]] = []

    # -- devices -------------------------------------------------------------
    def knows(self, device_id: str) -> bool:
        return device_id in self.devices

    def add_device(self, device_id: str, fleet: str, last_seq: int, now: float) -> None:
        """Start tracking an enrolled device whose highest accepted seq is ``last_seq`` (-1: none)."""
        if device_id in self.devices:
            return
        self.devices[device_id] = _Device(fleet, last_seq, float(self.burst), now)
        while len(self.devices) > self.max_devices:
            old_id, old = self.devices.popitem(last=False)
            self._end_all(old_id, old)

    def fleet_of(self, device_id: str) -> str:
        return self.devices[device_id].fleet

    def refused(self, fleet: str, reason: str) -> None:
        """Count a chunk refused before it reached a device's run (bad_topic, unknown_device)."""
        self.counts[(fleet, "chunk", reason)] += 1

    # -- chunks --------------------------------------------------------------
    def feed(self, device_id: str, payload: bytes, now: float) -> str | None:
        """Take one chunk of an added device; None if it was valid, else the reason it was dropped."""
        d = self.devices[device_id]
        self.devices.move_to_end(device_id)
        reason = self._check(d, device_id, payload, now)
        self.counts[(d.fleet, "chunk", reason or CHECKED)] += 1
        return reason

    def _check(self, d: _Device, device_id: str, payload: bytes, now: float) -> str | None:
        if len(payload) > self.max_chunk_bytes:
            return "oversize"
        d.tokens = min(float(self.burst), d.tokens + (now - d.updated) * self.rate)
        d.updated = now
        if d.tokens < 1.0:
            return "rate_limited"
        d.tokens -= 1.0
        c = parse_chunk(payload)
        if c is None:
            return "malformed"
        owner = self.owners.get(c.nonce)
        if owner is not None and owner != device_id:
            return "foreign_nonce"
        run = d.run
        if run is not None and now - run.first_at > RUN_TIMEOUT_S:
            self._end_run(d, device_id, run)
            run = d.run = None
        if run is None or run.nonce != c.nonce:
            claimed = d.awaiting.pop(c.seq, None) if c.nonce not in d.used else None
            if claimed is None:
                if c.nonce in d.used or c.seq < d.claimed_seq:
                    return "replayed"  # an old nonce, or the seq of a report already accepted
                if c.seq == d.claimed_seq:
                    return "out_of_order"  # a run for a report that has arrived already
            if run is not None:
                self._end_run(d, device_id, run)  # superseded before it completed
            run = d.run = _Run(c.nonce, c.seq, c.count, now, now, claimed=claimed)
            self._use_nonce(d, device_id, c.nonce)
            self._no_run_before(d, device_id, c.seq)
        if run.failed is not None:
            return run.failed  # the rest of a run that already failed
        if c.seq != run.seq or c.count != run.count:
            return self._fail(d, device_id, run, "invalid_chunk")
        if c.index != run.next_index:
            return self._fail(d, device_id, run, "missing_chunks" if c.index > run.next_index else "out_of_order")
        if c.data != stream(c.nonce, c.index, len(c.data)):
            return self._fail(d, device_id, run, "invalid_chunk")
        if run.next_index:
            run.after_first += len(payload)
        run.next_index += 1
        run.bytes += len(payload)
        run.last_at = now
        if run.next_index == run.count:
            self._finish(d, device_id, run)
        return None

    def _fail(self, d: _Device, device_id: str, run: _Run, reason: str) -> str:
        run.failed = reason
        if run.claimed is not None and not run.counted:
            self._resolve(d, device_id, run, run.result())
        return reason

    def _resolve(self, d: _Device, device_id: str, run: _Run, result: RunResult) -> None:
        """The outcome of a run whose report was accepted while it was in progress."""
        assert run.claimed is not None
        boot, report_at = run.claimed
        result = _ordered(result, report_at)
        run.counted = True
        self._count_run(d, result.outcome)
        self.resolved.append((device_id, boot, result))

    def _finish(self, d: _Device, device_id: str, run: _Run) -> None:
        d.run = None
        if run.claimed is not None:
            self._resolve(d, device_id, run, run.result())
            return
        d.done[run.seq] = run.result()
        while len(d.done) > DONE_RUNS:
            _, old = d.done.popitem(last=False)
            self._count_run(d, "unclaimed" if old.outcome == CHECKED else old.outcome)

    def _use_nonce(self, d: _Device, device_id: str, nonce: bytes) -> None:
        d.used[nonce] = None
        while len(d.used) > USED_NONCES:
            d.used.popitem(last=False)
        self.owners[nonce] = device_id
        while len(self.owners) > NONCE_OWNERS:
            self.owners.popitem(last=False)

    # -- reports -------------------------------------------------------------
    def claim(self, device_id: str, fleet: str, seq: int, report_at: float, boot: int = 0) -> RunResult | None:
        """The run for report (``boot``, ``seq``) of an enrolled device, which ingest has just accepted.

        ``report_at``: when the report came off the socket (same clock as the
        chunks).  None when no run for ``seq`` was seen.  A run still in
        progress gives a PENDING result: chunks and report come over two
        connections, so its last chunks may not have been read yet; its
        outcome lands in ``resolved`` when it completes or fails, checked
        against ``report_at`` then.  When no chunk of a run for ``seq`` has
        come yet, the claim waits too (PENDING) if the device has sent runs
        before.  (Not on whether the report states a bw_up: every synthetic or
        cheating device that states one without probing would make its
        `verified` messages wait; a device's first run after a gateway start
        can therefore be missed if its report is read first.)  Runs for earlier seqs still
        waiting end as unclaimed; later chunks for ``seq`` or below are refused.
        """
        d = self.devices.get(device_id)
        if d is None:
            self.add_device(device_id, fleet, seq, report_at)
            d = self.devices[device_id]
            d.claimed_seq = seq - 1  # raised below, after the run it may still be waiting for
        self.devices.move_to_end(device_id)
        d.claimed_seq = max(d.claimed_seq, seq)
        result = d.done.pop(seq, None)
        for s in [s for s in d.done if s < seq]:
            old = d.done.pop(s)
            self._count_run(d, "unclaimed" if old.outcome == CHECKED else old.outcome)
        run = d.run
        if result is None and run is not None and run.seq <= seq and not run.counted:
            if run.seq < seq:
                self._end_run(d, device_id, run)
                d.run = None
            elif run.failed is not None:
                result = run.result()
                run.counted = True  # stays, to refuse the rest of its chunks as its reason
            else:
                run.claimed = (boot, report_at)
                return run.result(PENDING)
        if result is None:
            if not d.used or (d.run is not None and d.run.seq > seq):
                return None  # a device that does not probe, or whose next run has begun
            # A device that probes: its run may still be on the other connection.
            d.awaiting[seq] = (boot, report_at)
            while len(d.awaiting) > DONE_RUNS:
                old_seq, (old_boot, _) = d.awaiting.popitem(last=False)
                self.resolved.append((device_id, old_boot, RunResult(old_seq, ABSENT, None, 0, 0, 0, 0.0)))
            return RunResult(seq, PENDING, None, 0, 0, 0, 0.0)
        result = _ordered(result, report_at)
        self._count_run(d, result.outcome)
        return result

    # -- housekeeping ----------------------------------------------------------
    def sweep(self, now: float) -> None:
        """End runs incomplete for longer than RUN_TIMEOUT_S (call every few seconds)."""
        for device_id, d in self.devices.items():
            if d.run is not None and now - d.run.first_at > RUN_TIMEOUT_S:
                self._end_run(d, device_id, d.run)
                d.run = None
            for s in [s for s, (_, at) in d.awaiting.items() if now - at > RUN_TIMEOUT_S]:
                boot, _ = d.awaiting.pop(s)
                self.resolved.append((device_id, boot, RunResult(s, ABSENT, None, 0, 0, 0, 0.0)))

    def _no_run_before(self, d: _Device, device_id: str, seq: int) -> None:
        """A run for ``seq`` began: reports before it that waited for a run have none."""
        for s in [s for s in d.awaiting if s < seq]:
            boot, _ = d.awaiting.pop(s)
            self.resolved.append((device_id, boot, RunResult(s, ABSENT, None, 0, 0, 0, 0.0)))

    def _end_run(self, d: _Device, device_id: str, run: _Run) -> None:
        # A run in progress is never complete (complete runs move to ``done``).
        if run.counted:
            return
        if run.claimed is not None:
            self._resolve(d, device_id, run, run.result(run.failed or "missing_chunks"))
        else:
            self._count_run(d, run.failed or "missing_chunks")

    def _end_all(self, device_id: str, d: _Device) -> None:
        if d.run is not None:
            self._end_run(d, device_id, d.run)
        for r in d.done.values():
            self._count_run(d, "unclaimed" if r.outcome == CHECKED else r.outcome)

    def _count_run(self, d: _Device, outcome: str) -> None:
        self.counts[(d.fleet, "run", outcome)] += 1

    def drain_counts(self) -> dict[tuple[str, str, str], int]:
        """Counts since the last call, and reset them (the caller stores and exports them)."""
        out = dict(self.counts)
        self.counts.clear()
        return out

    def stats(self) -> dict[str, Any]:
        return {"devices": len(self.devices), "runs_in_progress": sum(1 for d in self.devices.values() if d.run)}
