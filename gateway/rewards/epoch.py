"""Epoch files: the published inputs and outputs of one reward epoch, its root, recomputation (sans-I/O).

An epoch file is one JSON object in canonical form (keys sorted, no spaces,
ASCII, no trailing newline; gateway/receipts.py `canonical`):

    {"format": "surge-reward-epoch/1", "header": {...}, "body": {...}, "signature": "<hex>"}

* ``body`` holds the inputs (the formula, the confirmed batches of the epoch,
  every device's attested figures with the reason for every excluded report,
  the owners' cumulative amounts before this epoch) and the outputs (points
  per device, amount per owner, cumulative per owner);
* ``header`` is what the gateway signs and the chain stores: epoch number,
  window, root over the (owner, cumulative) leaves, leaf count, totals,
  SHA-256 of the canonical body, and the previous epoch's root;
* ``signature`` is the gateway chain key's EIP-191 signature over the
  canonical header.

Leaf data = owner address (20 bytes) || cumulative (uint256 big-endian),
Solidity's ``abi.encodePacked(address, uint256)``; leaves sorted by owner
address bytes; the tree is RFC 9162 (surge_protocol/merkle.py).  Token amounts are
decimal strings in JSON (they exceed 2**53, where many JSON readers round).

``recompute`` rebuilds outputs, root and header from the inputs alone and
lists every difference; ``seal`` refuses to produce a file whose outputs
break the invariants (above all: allocated never more than the budget).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

from Crypto.Hash import keccak

from surge_protocol import merkle
from gateway.receipts import canonical, recover_signer, strict_json
from gateway.rewards import formula as F

EPOCH_FORMAT = "surge-reward-epoch/1"
ZERO_ROOT = bytes(32)

# Why a report of an epoch's confirmed batches earns nothing (docs/protocol.md "Reward epochs").
NOT_ATTESTED = "not_attested"  # no attestation row: nothing attested, never the claimed figures
OWNER_NOT_ADDRESS = "owner_not_address"  # the device's owner is a label, not an EVM address
NO_OWNER = "no_owner"  # enrolled without --owner
REASONS = (NOT_ATTESTED, OWNER_NOT_ADDRESS, NO_OWNER)


class EpochError(Exception):
    """An epoch that cannot be produced, or a file that is not a valid epoch file; says why."""


_HEX = re.compile("[0-9a-fA-F]{40}")


@lru_cache(maxsize=1 << 20)
def checksum_owner(owner: str) -> str | None:
    """The EIP-55 form of an owner that is an EVM address, else None (a label).

    Written out (keccak of the lowercase hex, a capital where its nibble is >= 8) and cached:
    eth_utils' version took 85% of closing an epoch of 20,000 owners.
    """
    if not isinstance(owner, str) or len(owner) != 42 or not owner.startswith("0x"):
        return None
    digits = owner[2:]
    if _HEX.fullmatch(digits) is None:
        return None
    low = digits.lower()
    nibbles = keccak.new(digest_bits=256, data=low.encode()).digest().hex()
    checksummed = "".join([c.upper() if n > "7" else c for c, n in zip(low, nibbles)])
    if digits != low and digits != digits.upper() and digits != checksummed:
        return None  # mixed case is a checksum (EIP-55), and this one is wrong: a typo, not an address
    return "0x" + checksummed


class OwnerError(ValueError):
    """An enrollment owner that looks like an EVM address but is not one; says what is wrong."""


_HEX_ONLY = re.compile("[0-9a-fA-F]+")


def enrollment_owner(owner: str) -> tuple[str, str | None]:
    """What enrollment stores for ``--owner``, and a warning when it earns nothing.

    An EVM address (0x and 40 hex digits; the EIP-55 checksum checked when
    mixed case) is stored checksummed.  Anything that looks like one but is
    not (0x and hex digits of another length, a checksum that does not match,
    40 hex digits without 0x) is refused with OwnerError: a typo would send a
    device's rewards to nobody.  Any other text is a label, kept as given,
    with a warning: a label earns nothing.
    """
    if not owner:
        return owner, None
    digits = owner[2:] if owner[:2] in ("0x", "0X") else None
    if digits is None and len(owner) == 40 and _HEX_ONLY.fullmatch(owner):
        raise OwnerError("owner %r is 40 hex digits without the 0x prefix: give it as 0x%s" % (owner, owner))
    if digits is not None and (digits == "" or _HEX_ONLY.fullmatch(digits)):
        if len(digits) != 40:
            raise OwnerError(
                "owner %r looks like an EVM address but has %d hex digits after 0x, not 40: "
                "check that it was copied whole" % (owner, len(digits))
            )
        address = checksum_owner("0x" + digits)
        if address is None:
            raise OwnerError(
                "owner %r has a mixed-case EIP-55 checksum that does not match (a typo?): copy the "
                "address again, or give it all in lower case to skip the checksum" % owner
            )
        return address, None
    return owner, (
        "owner %r is a label, not an EVM address: this device earns no rewards (every epoch lists "
        "its reports as excluded %s); give --owner 0x... (40 hex digits) to be paid" % (owner, OWNER_NOT_ADDRESS)
    )


def ineligible_reason(owner: str) -> str | None:
    if not owner:
        return NO_OWNER
    return None if checksum_owner(owner) is not None else OWNER_NOT_ADDRESS


def leaf_data(owner: str, cumulative: int) -> bytes:
    """abi.encodePacked(address owner, uint256 cumulative): 52 bytes."""
    if not 0 <= cumulative <= F.UINT256_MAX:
        raise EpochError("cumulative amount %d outside uint256" % cumulative)
    return bytes.fromhex(owner[2:]) + cumulative.to_bytes(32, "big")


def sorted_cumulative(cumulative: Mapping[str, int]) -> list[tuple[str, int]]:
    return sorted(((o, a) for o, a in cumulative.items() if a > 0), key=lambda kv: F.owner_key(kv[0]))


def tree(cumulative: Sequence[tuple[str, int]]) -> merkle.MerkleTree:
    """The epoch's tree over (owner, cumulative) leaves, in the order given (sorted_cumulative)."""
    return merkle.MerkleTree([merkle.leaf_hash(leaf_data(o, a)) for o, a in cumulative])


@dataclass(frozen=True)
class DeviceInputs:
    """One device's line of an epoch file's inputs."""

    device: str
    owner: str  # EIP-55 address, or the label it was enrolled with
    board: str
    reports: int  # its reports in the epoch's confirmed batches
    attested: int  # of those, with an attestation row
    interval_s: int
    storage_bytes: int
    bw_up: int | None
    flags: tuple[str, ...]
    challenges_passed: int
    challenges_failed: int
    challenges_timed_out: int
    excluded: tuple[tuple[int, int, str], ...]  # (boot, seq, reason) of every report that earns nothing

    @property
    def ineligible(self) -> str | None:
        return ineligible_reason(self.owner)

    def attested_figures(self) -> F.Attested:
        return F.Attested(
            board=self.board,
            storage_bytes=self.storage_bytes,
            bw_up=self.bw_up,
            attested=self.attested,
            interval_s=self.interval_s,
            flagged=bool(self.flags),
            failed_challenge=self.challenges_failed > 0 or "challenge_failed" in self.flags,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "owner": self.owner,
            "board": self.board,
            "reports": self.reports,
            "attested": self.attested,
            "interval_s": self.interval_s,
            "storage_bytes": self.storage_bytes,
            "bw_up": self.bw_up,
            "flags": list(self.flags),
            "challenges": {
                "passed": self.challenges_passed,
                "failed": self.challenges_failed,
                "timed_out": self.challenges_timed_out,
            },
            "excluded": [list(e) for e in self.excluded],
        }

    @classmethod
    def from_json(cls, d: Any) -> DeviceInputs:
        try:
            ch = d["challenges"]
            bw = d["bw_up"]
            out = cls(
                device=_str(d["device"]),
                owner=_str(d["owner"]),
                board=_str(d["board"]),
                reports=_nat(d["reports"]),
                attested=_nat(d["attested"]),
                interval_s=_nat(d["interval_s"]),
                storage_bytes=_nat(d["storage_bytes"]),
                bw_up=None if bw is None else _nat(bw),
                flags=tuple(_str(x) for x in d["flags"]),
                challenges_passed=_nat(ch["passed"]),
                challenges_failed=_nat(ch["failed"]),
                challenges_timed_out=_nat(ch["timed_out"]),
                excluded=tuple((_nat(e[0]), _nat(e[1]), _str(e[2])) for e in d["excluded"]),
            )
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise EpochError("device entry %r is malformed (%s)" % (str(d)[:80], exc)) from None
        if out.attested > out.reports or len(out.excluded) > out.reports:
            raise EpochError("device %s: more attested or excluded reports than reports" % out.device)
        return out


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a string, got %r" % (v,))
    return v


def _nat(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError("expected a non-negative integer, got %r" % (v,))
    return v


def _amount(v: Any) -> int:
    if not isinstance(v, str) or not v.isdigit() or (len(v) > 1 and v[0] == "0"):
        raise ValueError("amounts are decimal strings without leading zeros, got %r" % (v,))
    n = int(v)
    if n > F.UINT256_MAX:
        raise ValueError("amount %s exceeds uint256" % v)
    return n


@dataclass(frozen=True)
class Outputs:
    device_points: tuple[tuple[str, int], ...]  # in device order
    amounts: tuple[tuple[str, int], ...]  # owner -> this epoch, sorted by address
    cumulative: tuple[tuple[str, int], ...]  # owner -> all epochs so far, sorted by address: the leaves
    allocated: int
    unallocated: int

    def to_json(self) -> dict[str, Any]:
        return {
            "points": [[d, p] for d, p in self.device_points],
            "amounts": [[o, str(a)] for o, a in self.amounts],
            "cumulative": [[o, str(a)] for o, a in self.cumulative],
            "allocated": str(self.allocated),
            "unallocated": str(self.unallocated),
        }


def compute(
    f: F.Formula, devices: Sequence[DeviceInputs], prev_cumulative: Mapping[str, int], epoch_ms: int
) -> Outputs:
    """The outputs of an epoch from its inputs: the formula, applied."""
    device_points: list[tuple[str, int]] = []
    eligible: list[tuple[str, F.Attested]] = []
    for d in devices:
        a = d.attested_figures()
        if d.ineligible is None:
            owner = checksum_owner(d.owner)
            assert owner is not None
            device_points.append((d.device, F.points(f, a, epoch_ms)))
            eligible.append((owner, a))
        else:
            device_points.append((d.device, 0))
    amounts = F.allocate(f.budget, F.owner_points(f, eligible, epoch_ms))
    cumulative = dict(prev_cumulative)
    for o, amount in amounts.items():
        cumulative[o] = cumulative.get(o, 0) + amount
    allocated = sum(amounts.values())
    return Outputs(
        tuple(device_points),
        tuple(sorted(amounts.items(), key=lambda kv: F.owner_key(kv[0]))),
        tuple(sorted_cumulative(cumulative)),
        allocated,
        f.budget - allocated,
    )


@dataclass(frozen=True)
class EpochRecord:
    """An epoch's header and body (what ``seal`` turns into file bytes)."""

    header: dict[str, Any]
    body: dict[str, Any]

    @property
    def epoch(self) -> int:
        return int(self.header["epoch"])

    @property
    def root(self) -> bytes:
        return bytes.fromhex(self.header["root"])


def build(
    gateway_id: str,
    gateway_address: str,
    epoch: int,
    start_ms: int,
    end_ms: int,
    f: F.Formula,
    batches: Sequence[Mapping[str, Any]],
    devices: Sequence[DeviceInputs],
    prev_cumulative: Mapping[str, int],
    prev_root: bytes,
) -> EpochRecord:
    """Compute an epoch's outputs and header from its inputs."""
    if epoch < 1 or end_ms <= start_ms:
        raise EpochError("epoch %d: number must be >= 1 and its window non-empty" % epoch)
    devices = sorted(devices, key=lambda d: d.device)
    out = compute(f, devices, prev_cumulative, end_ms - start_ms)
    body = {
        "formula": f.to_json(),
        "batches": [dict(b) for b in batches],
        "devices": [d.to_json() for d in devices],
        "prev_cumulative": [[o, str(a)] for o, a in sorted_cumulative(prev_cumulative)],
        "outputs": out.to_json(),
    }
    return EpochRecord(_header(gateway_id, gateway_address, epoch, start_ms, end_ms, out, prev_root, body), body)


def _header(
    gateway_id: str,
    gateway_address: str,
    epoch: int,
    start_ms: int,
    end_ms: int,
    out: Outputs,
    prev_root: bytes,
    body: Mapping[str, Any],
) -> dict[str, Any]:
    root = tree(out.cumulative).root if out.cumulative else ZERO_ROOT
    return {
        "v": 1,
        "gateway_id": gateway_id,
        "gateway_address": gateway_address,
        "epoch": epoch,
        "start": start_ms,
        "end": end_ms,
        "root": root.hex(),
        "leaves": len(out.cumulative),
        "allocated": str(out.allocated),
        "cumulative_total": str(sum(a for _, a in out.cumulative)),
        "prev_root": prev_root.hex(),
        "body_sha256": hashlib.sha256(canonical(body)).hexdigest(),
    }


def check_invariants(rec: EpochRecord) -> None:
    """What no epoch may break, whoever computed it: raises EpochError naming the broken rule."""
    body, header = rec.body, rec.header
    try:
        budget = _amount(body["formula"]["budget"])
        amounts = [(o, _amount(a)) for o, a in body["outputs"]["amounts"]]
        cumulative = [(o, _amount(a)) for o, a in body["outputs"]["cumulative"]]
        prev = {o: _amount(a) for o, a in body["prev_cumulative"]}
        allocated = _amount(body["outputs"]["allocated"])
        unallocated = _amount(body["outputs"]["unallocated"])
    except (KeyError, TypeError, ValueError) as exc:
        raise EpochError("outputs are malformed: %s" % exc) from None
    total = sum(a for _, a in amounts)
    if total > budget:
        raise EpochError("amounts sum to %d, more than the budget %d" % (total, budget))
    if allocated != total or allocated + unallocated != budget:
        raise EpochError(
            "allocated %d / unallocated %d do not add up to the amounts %d and budget %d"
            % (allocated, unallocated, total, budget)
        )
    expected = dict(prev)
    for o, a in amounts:
        expected[o] = expected.get(o, 0) + a
    if dict(cumulative) != {o: a for o, a in expected.items() if a > 0} or len(dict(cumulative)) != len(cumulative):
        raise EpochError("cumulative amounts are not previous cumulative plus this epoch's amounts")
    if [o for o, _ in cumulative] != [o for o, _ in sorted_cumulative(dict(cumulative))]:
        raise EpochError("leaves are not sorted by owner address")
    if not cumulative:
        raise EpochError("no owner has earned anything yet: an epoch needs at least one leaf")
    if header["root"] != tree(cumulative).root.hex() or header["leaves"] != len(cumulative):
        raise EpochError("root or leaf count does not match the cumulative amounts")


Signer = Callable[[bytes], bytes]


def seal(rec: EpochRecord, sign: Signer) -> bytes:
    """The epoch file's canonical bytes, signed; refuses a record that breaks an invariant."""
    check_invariants(rec)
    return canonical(
        {"format": EPOCH_FORMAT, "header": rec.header, "body": rec.body, "signature": sign(canonical(rec.header)).hex()}
    )


@dataclass(frozen=True)
class EpochFile:
    raw: bytes
    record: EpochRecord
    signature: bytes


def parse(raw: bytes) -> EpochFile:
    """Structure only (format, members, canonical form); ``recompute`` checks the content."""
    doc = strict_json(raw, EpochError)
    if not isinstance(doc, dict) or doc.get("format") != EPOCH_FORMAT:
        raise EpochError("not an epoch file (format is not %s)" % EPOCH_FORMAT)
    if set(doc) != {"format", "header", "body", "signature"}:
        raise EpochError("members must be exactly format, header, body, signature")
    header, body = doc["header"], doc["body"]
    if not isinstance(header, dict) or not isinstance(body, dict):
        raise EpochError("header and body must be objects")
    try:
        signature = bytes.fromhex(doc["signature"])
    except (TypeError, ValueError):
        raise EpochError("signature is not hex") from None
    return EpochFile(raw, EpochRecord(header, body), signature)


def header_of(raw: bytes) -> dict[str, Any]:
    """The header of a stored (canonical, already checked) epoch file without parsing its body.

    In canonical form the header is the member before `signature`, and the bytes `,"header":`
    cannot occur inside a JSON string (its quotes would be escaped), so it is found from the end.
    """
    start, end = raw.rfind(b',"header":'), raw.rfind(b',"signature":')
    if start < 0 or end < start:
        return dict(parse(raw).record.header)
    header: dict[str, Any] = json.loads(raw[start + 10 : end])
    return header


recover = recover_signer  # the gateway's EIP-191 signatures: one recovery for bundles, proofs and epochs


_HEADER_KEYS = {
    "v",
    "gateway_id",
    "gateway_address",
    "epoch",
    "start",
    "end",
    "root",
    "leaves",
    "allocated",
    "cumulative_total",
    "prev_root",
    "body_sha256",
}


def recompute(raw: bytes, previous: bytes | None = None) -> list[str]:
    """Every difference between an epoch file and what its inputs give; empty when it matches byte for byte.

    With ``previous`` (the epoch file before it) also checks that this
    epoch's previous cumulative amounts and prev_root are that epoch's.
    """
    try:
        ef = parse(raw)
    except EpochError as exc:
        return [str(exc)]
    header, body = ef.record.header, ef.record.body
    diffs: list[str] = []
    if set(header) != _HEADER_KEYS:
        return ["header members differ: %s" % ", ".join(sorted(set(header) ^ _HEADER_KEYS))]
    if set(body) != {"formula", "batches", "devices", "prev_cumulative", "outputs"}:
        return ["body members must be formula, batches, devices, prev_cumulative, outputs"]
    try:
        f = F.from_json(body["formula"], "formula.")
        devices = [DeviceInputs.from_json(d) for d in body["devices"]]
        prev = {_str(o): _amount(a) for o, a in body["prev_cumulative"]}
        if any(checksum_owner(o) != o for o in prev):
            raise EpochError("prev_cumulative owners must be EIP-55 addresses")
        rebuilt = build(
            _str(header["gateway_id"]),
            _str(header["gateway_address"]),
            _nat(header["epoch"]),
            _nat(header["start"]),
            _nat(header["end"]),
            f,
            body["batches"],
            devices,
            prev,
            bytes.fromhex(header["prev_root"]),
        )
    except (F.FormulaError, EpochError, TypeError, ValueError, KeyError) as exc:
        return ["inputs: %s" % exc]
    if hashlib.sha256(canonical(body)).hexdigest() != header.get("body_sha256"):
        diffs.append("header.body_sha256 is not the SHA-256 of the body: the body was changed")
    for key, value in sorted(rebuilt.body["outputs"].items()):
        if body["outputs"].get(key) != value:
            diffs.append("outputs.%s differs from what the inputs give" % key)
    for key in sorted(_HEADER_KEYS):
        if header.get(key) != rebuilt.header[key]:
            diffs.append("header.%s is %r, the inputs give %r" % (key, header.get(key), rebuilt.header[key]))
    try:
        check_invariants(ef.record)
    except EpochError as exc:
        diffs.append(str(exc))
    signer = recover(canonical(header), ef.signature)
    if signer is None or signer.lower() != str(header["gateway_address"]).lower():
        diffs.append("signature is not the gateway's (%s) over the header" % header["gateway_address"])
    if (
        not diffs
        and canonical({"format": EPOCH_FORMAT, "header": header, "body": body, "signature": ef.signature.hex()}) != raw
    ):
        diffs.append("the file is not in canonical form (bytes differ from the canonical JSON of its content)")
    if previous is not None:
        diffs += _against_previous(ef, previous)
    return diffs


def _against_previous(ef: EpochFile, previous: bytes) -> list[str]:
    try:
        prev = parse(previous)
    except EpochError as exc:
        return ["previous epoch file: %s" % exc]
    out = []
    h, ph = ef.record.header, prev.record.header
    if h.get("epoch") != ph.get("epoch", 0) + 1 or h.get("gateway_address") != ph.get("gateway_address"):
        out.append("the previous file is not epoch %s - 1 of the same gateway" % h.get("epoch"))
    if h.get("prev_root") != ph.get("root"):
        out.append("prev_root is not the previous epoch's root")
    if h.get("start", 0) < ph.get("end", 0):
        out.append("the window starts before the previous epoch ended")
    if ef.record.body.get("prev_cumulative") != prev.record.body.get("outputs", {}).get("cumulative"):
        out.append("prev_cumulative is not the previous epoch's cumulative")
    return out
