"""Report verification as a chain of small pure checks.

Each check returns the value the next one needs, or a ``Rejection`` with a
stable reason code (docs/protocol.md, "Rejection reasons").  Nothing here
touches the network or the disk: the registry, per-device state and the
duplicate lookup arrive as plain values and callables, so every rule is
testable with bytes in and outcomes out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

from surge_protocol import claims as C
from boards import BoardProfile
from firmware_shim.cose import COSEError
from gateway import envelope
from gateway.envelope import Envelope
from gateway.store import Device, DeviceState
from surge_protocol import topics

DEFAULT_MAX_BYTES = C.MAX_REPORT_BYTES
DEFAULT_FUTURE_SKEW_S = 300.0
# Reports replayed from a device's outbox can be old; older than this is refused.
DEFAULT_MAX_AGE_S = 30 * 86400.0
UINT64_MAX = 2**64 - 1


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str
    device_id: str | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    device: Device
    boot: int
    seq: int
    claims: Mapping[Any, Any]
    gap: bool
    gap_detail: str
    report_hash: bytes  # PREV value the next report must carry
    cose: bytes


@dataclass(frozen=True, slots=True)
class Duplicate:
    device_id: str
    boot: int
    seq: int


Outcome = Union[Accepted, Duplicate, Rejection]


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int = DEFAULT_MAX_BYTES
    future_skew_s: float = DEFAULT_FUTURE_SKEW_S
    max_age_s: float = DEFAULT_MAX_AGE_S


def parse_topic(topic: str) -> tuple[str, str, str] | Rejection:
    """(fleet, device id, kind) of ``surge/v1/<fleet>/<device>/<kind>``."""
    parts = topics.parse(topic)
    if parts is None:
        return Rejection("bad_topic", "topic %r is not surge/v1/<fleet>/<device>/<kind>" % topic[:120])
    return parts


def check_size(data: bytes, limits: Limits) -> Rejection | None:
    if len(data) > limits.max_bytes:
        return Rejection("oversize", "%d bytes, limit %d" % (len(data), limits.max_bytes))
    return None


def check_envelope(data: bytes) -> Envelope | Rejection:
    try:
        return envelope.parse(data)
    except COSEError as exc:
        return Rejection(exc.reason, exc.detail)


def check_device(env: Envelope, topic_device: str, lookup: Callable[[str], Device | None]) -> Device | Rejection:
    device = lookup(topic_device)
    if device is None:
        return Rejection(
            "unknown_device",
            "device %s is not enrolled; enroll it with `surge gateway enroll`" % topic_device,
            topic_device,
        )
    if not device.active:
        return Rejection("revoked_device", "device %s was revoked" % topic_device, topic_device)
    # The kid names the device's current key: its enrolled one, or the one it
    # rotated to (protocol §3.1), while the device id (topic, broker user) stays.
    current = C.kid(device.pubkey)
    if env.kid != current:
        why = (
            (
                "the key with kid %s is retired: device %s rotated to kid %s"
                % (env.kid.hex(), topic_device, current.hex())
            )
            if env.kid is not None and env.kid.hex() == device.device_id
            else ("kid %s is not the current key of device %s" % (env.kid.hex() if env.kid else None, topic_device))
        )
        return Rejection("kid_mismatch", why, topic_device)
    return device


def check_signature(env: Envelope, device: Device) -> Rejection | None:
    if envelope.verify(env, device.pubkey):
        return None
    return Rejection(
        "bad_signature", "signature does not verify with the enrolled key of %s" % device.device_id, device.device_id
    )


def _uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= UINT64_MAX


_OPTIONAL_UINTS = (C.STORAGE_TOTAL, C.STORAGE_FREE, C.NET_RX, C.NET_TX, C.BW_UP, C.BW_DOWN, C.LINK_MBPS)


def check_claims(claims: Mapping[Any, Any], device_id: str) -> tuple[int, int, dict[Any, Any]] | Rejection:
    """(bootcount, seq, surge map) when the claims follow the v1 schema."""

    def bad(detail: str) -> Rejection:
        return Rejection("bad_claims", detail, device_id)

    for key, name in ((C.UPTIME, "uptime"), (C.BOOTCOUNT, "bootcount")):
        if not _uint(claims.get(key)):
            return bad("%s (%d) missing or not an unsigned integer" % (name, key))
    s = claims.get(C.SURGE)
    if not isinstance(s, dict):
        return bad("surge claims (-65537) missing or not a map")
    for key in (C.SEQ, C.INTERVAL, C.DROPPED):
        if not _uint(s.get(key)):
            return bad("%s missing or not an unsigned integer" % C.SURGE_NAMES[key])
    synced = s.get(C.SYNCED)
    if not isinstance(synced, bool):
        return bad("synced missing or not a bool")
    if synced != (C.IAT in claims):
        return bad("iat must be present exactly when synced is true")
    if C.IAT in claims and not _uint(claims[C.IAT]):
        return bad("iat is not an unsigned integer")
    for key in _OPTIONAL_UINTS:
        if key in s and not _uint(s[key]):
            return bad("%s is not an unsigned integer" % C.SURGE_NAMES[key])
    if C.RSSI in s and not (isinstance(s[C.RSSI], int) and not isinstance(s[C.RSSI], bool) and -150 <= s[C.RSSI] <= 0):
        return bad("rssi must be an integer dBm between -150 and 0")
    if C.PREV in s and not (isinstance(s[C.PREV], bytes) and len(s[C.PREV]) == C.PREV_BYTES):
        return bad("prev must be %d bytes" % C.PREV_BYTES)
    errors = s.get(C.ERRORS)
    if errors is not None and not (
        isinstance(errors, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in errors.items())
    ):
        return bad("errors must map probe names to text")
    if s[C.INTERVAL] == 0:
        return bad("interval must be positive")
    problem = check_optional_claims(claims, s)
    if problem is not None:
        return bad(problem)
    return claims[C.BOOTCOUNT], s[C.SEQ], s


def _bstr(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, bytes) and lo <= len(v) <= hi


# Optional registered claims and their §4.2 types (found by tests/test_fuzz.py:
# a signed nonce of the wrong type used to be accepted and republished).
_OPTIONAL_TYPES: tuple[tuple[int, str, Callable[[Any], bool]], ...] = (
    (C.NONCE, "nonce must be 8..64 bytes", lambda v: _bstr(v, 8, 64)),
    (C.UEID, "ueid must be 7..33 bytes", lambda v: _bstr(v, 7, 33)),
    (C.HWMODEL, "hwmodel must be 1..32 bytes", lambda v: _bstr(v, 1, 32)),
    (C.SWNAME, "swname must be text", lambda v: isinstance(v, str)),
    (C.SWVERSION, "swversion must be [text]", lambda v: isinstance(v, list) and len(v) == 1 and isinstance(v[0], str)),
)


def check_optional_claims(claims: Mapping[Any, Any], s: Mapping[Any, Any]) -> str | None:
    """Why an optional claim breaks its §4.2 type, or None."""
    for key, why, ok in _OPTIONAL_TYPES:
        if key in claims and not ok(claims[key]):
            return why
    if C.ERRORS in s and not s[C.ERRORS]:
        return "errors must name at least one probe"
    if C.NEXT_PUBKEY in s and not _bstr(s[C.NEXT_PUBKEY], 32, 32):
        return "next_pubkey must be 32 bytes"
    return None


def check_clock(claims: Mapping[Any, Any], now: float, limits: Limits, device_id: str) -> Rejection | None:
    iat = claims.get(C.IAT)
    if iat is None:
        return None
    if iat > now + limits.future_skew_s:
        return Rejection(
            "clock_skew",
            "iat %d is %.0f s in the future (limit %.0f s); fix the device clock"
            % (iat, iat - now, limits.future_skew_s),
            device_id,
        )
    if iat < now - limits.max_age_s:
        return Rejection("clock_skew", "iat %d is older than %.0f days" % (iat, limits.max_age_s / 86400), device_id)
    return None


def check_plausible(s: Mapping[Any, Any], board: BoardProfile | None, device_id: str) -> Rejection | None:
    total = s.get(C.STORAGE_TOTAL)
    free = s.get(C.STORAGE_FREE)
    if total is not None and free is not None and free > total:
        return Rejection("implausible", "storage_free %d exceeds storage_total %d" % (free, total), device_id)
    if board is None:
        return None
    for key, limit in (
        (C.STORAGE_TOTAL, board.max_storage_bytes),
        (C.BW_UP, board.max_bw_up_bytes_per_s),
        (C.BW_DOWN, board.max_bw_down_bytes_per_s),
    ):
        value = s.get(key)
        if value is not None and value > limit:
            return Rejection(
                "implausible",
                "%s %d exceeds what a %s can offer (%d)" % (C.SURGE_NAMES[key], value, board.name, limit),
                device_id,
            )
    return None


# The accepted reports of a device at seqs around a given one: seq -> exact COSE bytes.
Around = Callable[[str, int], Mapping[int, bytes]]


def check_sequence(
    device_id: str,
    boot: int,
    seq: int,
    s: Mapping[Any, Any],
    cose: bytes,
    state: DeviceState | None,
    seen: Callable[[str, int, int], bytes | None],
    around: Around | None = None,
) -> tuple[bool, str] | Duplicate | Rejection:
    """(gap, why) for a new report, Duplicate for a resend, Rejection for a replay.

    ``around``: lets a late report (seq below the highest accepted, never
    accepted itself) in, checked against its accepted neighbours
    (``check_late``); without it such a report is a replay.
    """
    if state is not None and seq <= state.seq:
        previous = seen(device_id, boot, seq)
        if previous == cose:
            return Duplicate(device_id, boot, seq)
        if previous is not None:
            return Rejection(
                "replay", "a different report for boot %d seq %d was already accepted" % (boot, seq), device_id
            )
        if around is None:
            return Rejection("replay", "seq %d is not above the last accepted seq %d" % (seq, state.seq), device_id)
        return check_late(device_id, boot, seq, s, cose, state, around)
    if state is not None and boot < state.boot:
        return Rejection("replay", "bootcount %d went backwards (last %d)" % (boot, state.boot), device_id)
    prev = s.get(C.PREV)
    if state is None:
        return (False, "") if seq == 0 or prev is None else (True, "first report seen has seq %d" % seq)
    if seq != state.seq + 1:
        return True, "seq jumped from %d to %d" % (state.seq, seq)
    if prev != state.last_hash:
        return True, "prev does not match the last accepted report"
    return False, ""


def check_late(
    device_id: str, boot: int, seq: int, s: Mapping[Any, Any], cose: bytes, state: DeviceState, around: Around
) -> tuple[bool, str] | Rejection:
    """A report below the highest accepted seq that was never accepted (docs/protocol.md §5).

    Why it can be genuine: several gateways consume one queue (or one shared
    subscription), so a device's reports reach them in parallel and a later
    one can commit first; a broker redelivers what a dead consumer held after
    newer messages.  Refusing it would lose a report the broker acknowledged
    to the device.  What still makes it a replay: a report already accepted
    at this seq (under any bootcount: seq never resets), a bootcount above the
    highest accepted report's, or an accepted successor whose ``prev`` is not
    this report's hash (the successor vouches for the one genuine report at
    this seq).  A ``prev`` that does not match the accepted predecessor, or a
    predecessor not seen yet, is a gap, as for any other report.
    """
    if boot > state.boot:
        return Rejection(
            "replay",
            "seq %d under bootcount %d is below the last accepted seq %d of bootcount %d"
            % (seq, boot, state.seq, state.boot),
            device_id,
        )
    near = around(device_id, seq)
    if seq in near:
        return Rejection("replay", "a different report with seq %d was already accepted" % seq, device_id)
    successor = near.get(seq + 1)
    if successor is not None:
        try:
            surge = envelope.parse(successor).claims.get(C.SURGE)
            successor_prev = surge.get(C.PREV) if isinstance(surge, dict) else None
        except COSEError:  # stored bytes were verified once; unreadable now means a damaged store
            successor_prev = None
        if successor_prev != C.prev_hash(cose):
            return Rejection(
                "replay",
                "seq %d is not the report the accepted seq %d follows (its prev differs)" % (seq, seq + 1),
                device_id,
            )
    if seq == 0:
        return False, ""
    predecessor = near.get(seq - 1)
    if predecessor is None:
        return True, "late report seq %d; seq %d not accepted" % (seq, seq - 1)
    if s.get(C.PREV) != C.prev_hash(predecessor):
        return True, "prev does not match the accepted seq %d" % (seq - 1)
    return False, ""


class Verifier:
    """Runs the checks in order for one message; keeps no state of its own."""

    def __init__(
        self,
        lookup: Callable[[str], Device | None],
        state: Callable[[str], DeviceState | None],
        seen: Callable[[str, int, int], bytes | None],
        board: Callable[[str], BoardProfile | None],
        limits: Limits = Limits(),
        around: Around | None = None,
    ) -> None:
        self.around = around
        self.lookup = lookup
        self.state = state
        self.seen = seen
        self.board = board
        self.limits = limits

    def verify(self, topic_device: str, data: bytes, now: float) -> Outcome:
        r = check_size(data, self.limits)
        if r is not None:
            return Rejection(r.reason, r.detail, topic_device)
        env = check_envelope(data)
        if isinstance(env, Rejection):
            return Rejection(env.reason, env.detail, topic_device)
        device = check_device(env, topic_device, self.lookup)
        if isinstance(device, Rejection):
            return device
        r = check_signature(env, device)
        if r is not None:
            return r
        parsed = check_claims(env.claims, device.device_id)
        if isinstance(parsed, Rejection):
            return parsed
        boot, seq, s = parsed
        seqcheck = check_sequence(
            device.device_id, boot, seq, s, data, self.state(device.device_id), self.seen, self.around
        )
        if isinstance(seqcheck, (Duplicate, Rejection)):
            return seqcheck
        r = check_clock(env.claims, now, self.limits, device.device_id)
        if r is None:
            r = check_plausible(s, self.board(device.board), device.device_id)
        if r is not None:
            return r
        gap, why = seqcheck
        return Accepted(device, boot, seq, env.claims, gap, why, C.prev_hash(data), data)
