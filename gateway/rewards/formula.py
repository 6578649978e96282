"""The reward formula as data: versioned, written into every epoch record (sans-I/O).

Everything here is integer arithmetic on gateway-attested figures only
(docs/protocol.md "Reward epochs"), so that anyone holding an epoch file gets
the same amounts to the last unit, in any language:

* a device's **points** = (storage weight x attested MiB + bandwidth weight x
  attested KiB/s), each figure first capped by its board's cap, then scaled by
  its **coverage** (attested reports / reports expected from its `interval`
  claim over the epoch, at most 1, in parts per million), then by the penalty
  of a flagged device or one that failed a storage challenge (per mille kept);
* an owner's points are the sum over their eligible devices;
* the epoch's **budget** is shared in proportion to owners' points: each gets
  the floor of its exact share, and the units left over by rounding go one
  each to the largest remainders (ties: lower owner address first).  If no
  owner has points, nothing is allocated.  The sum never exceeds the budget.

The formula is monotone in attested capacity: more attested storage or
bandwidth never lowers a device's points, and never lowers its owner's amount
(tested with hypothesis in tests/test_rewards_formula.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

FORMULA_VERSION = 1
MIB = 1 << 20
KIB = 1 << 10
PPM = 1_000_000
PERMILLE = 1000
# Token amounts are uint256 on chain.
UINT256_MAX = (1 << 256) - 1


class FormulaError(ValueError):
    """A formula (from the gateway config or an epoch file) that is not valid; names the field."""


@dataclass(frozen=True)
class BoardCap:
    """The most attested capacity that counts for a device of one board; None = no cap."""

    storage_bytes: int | None = None
    bw_up: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"storage_bytes": self.storage_bytes, "bw_up": self.bw_up}


@dataclass(frozen=True)
class Formula:
    budget: int  # per epoch, in the token's smallest unit
    storage_weight: int = 1  # points per attested MiB
    bandwidth_weight: int = 1  # points per attested KiB/s of upload
    # Kept of a device's points when it carries any attestation flag, per mille.
    flagged_permille: int = 500
    # Kept when it failed a storage challenge in the epoch (the stricter of the two applies).
    failed_challenge_permille: int = 0
    # Coverage is reports attested over reports expected from the device's own
    # `interval` claim; a device could claim a long interval to need fewer
    # reports, so the interval counted is at most this.
    max_interval_s: int = 3600
    caps: Mapping[str, BoardCap] = field(default_factory=dict)  # board name -> cap
    version: int = FORMULA_VERSION

    def cap(self, board: str) -> BoardCap:
        return self.caps.get(board) or self.caps.get("*") or BoardCap()

    def to_json(self) -> dict[str, Any]:
        """The formula as written into epoch files (budget as a decimal string: it may exceed 2**53)."""
        return {
            "version": self.version,
            "budget": str(self.budget),
            "storage_weight": self.storage_weight,
            "bandwidth_weight": self.bandwidth_weight,
            "flagged_permille": self.flagged_permille,
            "failed_challenge_permille": self.failed_challenge_permille,
            "max_interval_s": self.max_interval_s,
            "caps": {b: c.to_json() for b, c in sorted(self.caps.items())},
        }


_KEYS = {
    "version",
    "budget",
    "storage_weight",
    "bandwidth_weight",
    "flagged_permille",
    "failed_challenge_permille",
    "max_interval_s",
    "caps",
}


def _int(doc: Mapping[str, Any], key: str, default: int | None, lo: int, hi: int, what: str) -> int:
    value = doc.get(key, default)
    if isinstance(value, str) and value.isdigit():
        value = int(value)  # large amounts come as decimal strings (TOML integers are 64-bit)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FormulaError("%s%s must be an integer, got %r" % (what, key, value))
    if not lo <= value <= hi:
        raise FormulaError("%s%s must be %d..%d, got %d" % (what, key, lo, hi, value))
    return value


def _opt_int(doc: Mapping[str, Any], key: str, what: str) -> int | None:
    if doc.get(key) is None:
        return None
    return _int(doc, key, None, 0, UINT256_MAX, what)


def from_json(doc: Any, what: str = "rewards.") -> Formula:
    """Parse and validate a formula (the config's [rewards] table or an epoch file's `formula`)."""
    if not isinstance(doc, Mapping):
        raise FormulaError("%s: the formula must be a table/object" % what.rstrip("."))
    unknown = set(doc) - _KEYS
    if unknown:
        raise FormulaError("%s: unknown formula field(s) %s" % (what.rstrip("."), ", ".join(sorted(unknown))))
    version = _int(doc, "version", FORMULA_VERSION, 1, 1 << 31, what)
    if version != FORMULA_VERSION:
        raise FormulaError(
            "%sversion %d is not supported (this Surge knows version %d)" % (what, version, FORMULA_VERSION)
        )
    caps_doc = doc.get("caps", {})
    if not isinstance(caps_doc, Mapping):
        raise FormulaError("%scaps must be a table of board name -> {storage_bytes, bw_up}" % what)
    caps: dict[str, BoardCap] = {}
    for board, c in caps_doc.items():
        where = "%scaps.%s." % (what, board)
        if not isinstance(c, Mapping) or set(c) - {"storage_bytes", "bw_up"}:
            raise FormulaError("%s: a cap has storage_bytes and/or bw_up only" % where.rstrip("."))
        caps[str(board)] = BoardCap(_opt_int(c, "storage_bytes", where), _opt_int(c, "bw_up", where))
    return Formula(
        budget=_int(doc, "budget", None, 1, UINT256_MAX, what),
        storage_weight=_int(doc, "storage_weight", 1, 0, 1 << 64, what),
        bandwidth_weight=_int(doc, "bandwidth_weight", 1, 0, 1 << 64, what),
        flagged_permille=_int(doc, "flagged_permille", 500, 0, PERMILLE, what),
        failed_challenge_permille=_int(doc, "failed_challenge_permille", 0, 0, PERMILLE, what),
        max_interval_s=_int(doc, "max_interval_s", 3600, 1, 1 << 32, what),
        caps=caps,
        version=version,
    )


@dataclass(frozen=True)
class Attested:
    """A device's attested inputs for one epoch (aggregated by gateway/rewards/closer.py)."""

    board: str
    storage_bytes: int  # median of proven storage over its attested reports
    bw_up: int | None  # median of gateway-measured upload rates, None if none measured
    attested: int  # its reports in the epoch's confirmed batches that have an attestation
    interval_s: int  # the largest `interval` it claimed in the epoch
    flagged: bool  # any attestation flag in the epoch
    failed_challenge: bool  # any storage challenge failed in the epoch


def expected_reports(f: Formula, interval_s: int, epoch_ms: int) -> int:
    """Reports a device should have sent in an epoch of ``epoch_ms``: ceil(length / interval), at least 1."""
    interval_ms = max(1, min(interval_s, f.max_interval_s)) * 1000
    return max(1, -(-epoch_ms // interval_ms))


def coverage_ppm(f: Formula, a: Attested, epoch_ms: int) -> int:
    return min(PPM, a.attested * PPM // expected_reports(f, a.interval_s, epoch_ms))


def points(f: Formula, a: Attested, epoch_ms: int) -> int:
    """A device's points for the epoch (0 when nothing is attested)."""
    cap = f.cap(a.board)
    storage = a.storage_bytes if cap.storage_bytes is None else min(a.storage_bytes, cap.storage_bytes)
    bw = a.bw_up or 0
    if cap.bw_up is not None:
        bw = min(bw, cap.bw_up)
    raw = f.storage_weight * (max(0, storage) // MIB) + f.bandwidth_weight * (max(0, bw) // KIB)
    p = raw * coverage_ppm(f, a, epoch_ms) // PPM
    kept = PERMILLE
    if a.flagged:
        kept = min(kept, f.flagged_permille)
    if a.failed_challenge:
        kept = min(kept, f.failed_challenge_permille)
    return p * kept // PERMILLE


def owner_key(owner: str) -> bytes:
    """Sort key of an owner address: its 20 bytes (the order of the leaves too)."""
    return bytes.fromhex(owner[2:])


def allocate(budget: int, owner_points: Mapping[str, int]) -> dict[str, int]:
    """Share ``budget`` in proportion to points: floors, then largest remainders, ties by address.

    Owners with no points get nothing and are absent from the result; with no
    points at all nothing is allocated.  Never more than ``budget`` in total.
    """
    total = sum(owner_points.values())
    if total <= 0:
        return {}
    shares: dict[str, int] = {}
    remainders: list[tuple[int, bytes, str]] = []
    for owner, p in owner_points.items():
        if p < 0:
            raise FormulaError("negative points for %s" % owner)
        if p == 0:
            continue
        q, r = divmod(budget * p, total)
        shares[owner] = q
        remainders.append((-r, owner_key(owner), owner))
    left = budget - sum(shares.values())
    # left < number of owners with points: each gets at most one more unit.
    for _, _, owner in sorted(remainders)[:left]:
        shares[owner] += 1
    out = {o: a for o, a in shares.items() if a > 0}
    if sum(out.values()) > budget:  # cannot happen; the budget is the invariant this module exists for
        raise FormulaError("allocation exceeds the budget")
    return out


def owner_points(f: Formula, devices: Sequence[tuple[str, Attested]], epoch_ms: int) -> dict[str, int]:
    """owner -> summed points of (owner, figures) pairs of eligible devices."""
    out: dict[str, int] = {}
    for owner, a in devices:
        out[owner] = out.get(owner, 0) + points(f, a, epoch_ms)
    return out
