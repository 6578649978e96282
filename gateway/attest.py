"""The gateway's attestation of a report: what it measured and proved, signed (docs/protocol.md §2.8).

A report's claims are what the device says.  The ``attested`` object is
what this gateway verified itself about the same report: the upload rate it
timed from the device's probe run (gateway/probe_check.py), the storage the
device proved and its challenge counts (gateway/storage_audit, issue 12 part
B), and flags where a claim goes beyond that.  It is signed with the
gateway's chain key (EIP-191, like the batch attestation) and bound to the
report by the SHA-256 of the exact COSE bytes.  Version 2 objects are signed
per *group*: the canonical JSON bodies of up to ``GROUP`` consecutive
reports are the leaves of an RFC 9162 tree, the gateway signs its root once,
and each object carries its ``group`` (root, size, index, inclusion proof).
One secp256k1 signature per report was the largest CPU cost of the pipeline
(docs/performance.md, figure 1); version 1 objects (one signature each, over
the body) still verify.

Building, signing and checking are pure functions; :class:`AttestStage` is
the pipeline stage that attests each accepted report once, writes the
``attestations`` row, and only then lets the `verified` message go out.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Callable, Mapping, Sequence

import cbor2

from surge_protocol import claims as C
from surge_protocol import merkle
from gateway.envelope import payload_at
from gateway.receipts import canonical
from gateway.store import Store

log = logging.getLogger("surge.gateway.attest")

VERSION = 2
# Reports per signed group (v2): a signature costs ~25 us of CPU, a group
# member's proof ceil(log2 GROUP) hashes (5 here, ~340 bytes of hex in each
# `verified` message and bundle).
GROUP = 32
# Claimed bw_up above measured x (1 + BW_TOLERANCE) + BW_FLOOR is flagged
# bw_overclaim.  An honest agent's own figure (its send time including the
# last chunk's PUBACK, in whole ms) and the gateway's (first to last arrival)
# differ: real agent, Mosquitto (set_tcp_nodelay true) and gateway on
# loopback, claimed/measured ranged 0.19..1.87 over 30 4 KB runs and
# 0.57..3.34 over 30 64 KB runs (`python -m bench.probe_check --ratio 30 SIZE`,
# docs/protocol.md §2.8).  The flag is generous because it costs nothing: what
# is attested (and paid) is always the measured figure, never the claim.
BW_TOLERANCE = 3.0
BW_FLOOR = 65536
FLAGS = ("bw_overclaim", "bw_unverified", "challenge_failed", "storage_overclaim", "storage_unverified")
MEMBERS = (
    "v",
    "gateway_id",
    "device",
    "boot",
    "seq",
    "report_sha256",
    "at",
    "bw_up",
    "storage_bytes",
    "challenges",
    "flags",
    "gateway_address",
    "signature",
)  # v1
MEMBERS_V2 = MEMBERS + ("group",)
GROUP_MEMBERS = ("index", "proof", "root", "size")

# (proven storage bytes, challenges passed, failed, timed out) of a device now.
Standing = tuple[int, int, int, int]
NOTHING_PROVEN: Standing = (0, 0, 0, 0)
# The standings of some devices now; a device left out stands at NOTHING_PROVEN.
StandingFn = Callable[[Store, Sequence[str], float], Mapping[str, Standing]]


class AttestError(Exception):
    """An ``attested`` object that does not check out; the message says why."""


def no_standing(store: Store, device_ids: Sequence[str], now: float) -> Mapping[str, Standing]:
    """Nothing proven: the standing of every device until storage challenges run."""
    return {}


def storage_standing_source() -> StandingFn:
    """The storage audit's standings (issue 12 part B), or :func:`no_standing` without it."""
    try:
        from gateway.storage_audit.standing import storage_standings
    except ImportError:
        return no_standing
    fn: StandingFn = storage_standings
    return fn


def flags_for(claims: Mapping[Any, Any], bw_up: int | None, standing: Standing) -> list[str]:
    """The flags of a report (sorted): where its claims exceed what the gateway verified.

    bw_overclaim: claimed bw_up > measured x (1 + BW_TOLERANCE) + BW_FLOOR.
    bw_unverified: claims bw_up, no checked probe run.
    storage_unverified: claims storage_total > 0, nothing proven.
    storage_overclaim: claims more storage_total than proven.
    challenge_failed: a challenge in the audit window failed or timed out.
    """
    surge = claims.get(C.SURGE)
    surge = surge if isinstance(surge, dict) else {}
    flags = []
    claimed_bw = surge.get(C.BW_UP)
    if isinstance(claimed_bw, int):
        if bw_up is None:
            flags.append("bw_unverified")
        elif claimed_bw > bw_up * (1 + BW_TOLERANCE) + BW_FLOOR:
            flags.append("bw_overclaim")
    proven, _, failed, timed_out = standing
    claimed_storage = surge.get(C.STORAGE_TOTAL)
    if isinstance(claimed_storage, int) and claimed_storage > 0:
        if proven <= 0:
            flags.append("storage_unverified")
        elif claimed_storage > proven:
            flags.append("storage_overclaim")
    if failed > 0 or timed_out > 0:
        flags.append("challenge_failed")
    return sorted(flags)


def build(
    gateway_id: str,
    gateway_address: str,
    device_id: str,
    boot: int,
    seq: int,
    cose: bytes,
    at: float,
    bw_up: int | None,
    standing: Standing,
    flags: list[str],
    version: int = VERSION,
) -> dict[str, Any]:
    """The attested object without ``signature`` and ``group``: what v1 signs, a v2 group's leaf."""
    proven, passed, failed, timed_out = standing
    return {
        "v": version,
        "gateway_id": gateway_id,
        "device": device_id,
        "boot": boot,
        "seq": seq,
        "report_sha256": hashlib.sha256(cose).hexdigest(),
        "at": round(at * 1000),
        "bw_up": bw_up,
        "storage_bytes": proven,
        "challenges": {"passed": passed, "failed": failed, "timed_out": timed_out},
        "flags": sorted(flags),
        "gateway_address": gateway_address,
    }


def signed(body: Mapping[str, Any], sign: Callable[[bytes], bytes]) -> tuple[bytes, bytes]:
    """v1: (canonical JSON of ``body``, the 65-byte signature ``sign`` makes over it)."""
    message = canonical(dict(body))
    return message, sign(message)


def group_message(root: bytes, size: int) -> bytes:
    """What a v2 signature covers: the group's root and size (distinct from a batch's signed record)."""
    return canonical({"attested_group": {"root": root.hex(), "size": size}})


def signed_group(bodies: Sequence[bytes], sign: Callable[[bytes], bytes]) -> tuple[list[str], bytes]:
    """v2: the canonical bodies of one group -> (each body with its ``group`` member, the signature).

    The leaves are ``leaf_hash(body)`` in the order given; the returned
    texts are canonical JSON of each object without ``signature``.
    """
    tree = merkle.MerkleTree([merkle.leaf_hash(b) for b in bodies])
    root, size = tree.root, len(bodies)
    sig = sign(group_message(root, size))
    head = '"group":{"index":%d,"proof":[%s],"root":"' + root.hex() + '","size":' + str(size) + "},"
    out = []
    for i, (body, proof) in enumerate(zip(bodies, tree.proofs())):
        text = body.decode("ascii")
        at = text.find(_BEFORE_REPORT)
        if at < 0:  # not reached: build() always writes report_sha256
            doc = json.loads(text)
            doc["group"] = {"index": i, "proof": [p.hex() for p in proof], "root": root.hex(), "size": size}
            out.append(canonical(doc).decode("ascii"))
            continue
        # "group" sorts right after "gateway_id", before "report_sha256".
        out.append(text[: at + 1] + head % (i, ",".join('"%s"' % p.hex() for p in proof)) + text[at + 1 :])
    return out, sig


# In canonical (sorted) JSON "signature" sorts right before "storage_bytes";
# no string value can hold this text (its quotes would be escaped).
_BEFORE_SIGNATURE = ',"storage_bytes":'
_BEFORE_REPORT = ',"report_sha256":'


def to_json(body_json: str, signature: bytes) -> str:
    """The attested object as it appears in `verified` and bundles: the body plus ``signature``.

    ``body_json`` is the canonical JSON of the object without it (v1: what
    the signature covers; v2: with its ``group``, as stored); the member is
    spliced into its sorted place rather than parsing and dumping the object
    again (once per report per `verified` message; the same text either way,
    tests/test_attest.py).
    """
    at = body_json.find(_BEFORE_SIGNATURE)
    if at < 0:
        doc = json.loads(body_json)
        doc["signature"] = signature.hex()
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return '%s,"signature":"%s"%s' % (body_json[:at], signature.hex(), body_json[at:])


def verify(attested: Any, cose: bytes, boot: Any, seq: Any, gateway_address: str | None = None) -> dict[str, Any]:
    """Check an attested object against the report it is about; returns it, or raises AttestError.

    The signature (v1: over the body; v2: over the group's root, which the
    body's inclusion proof must lead to) must recover to ``gateway_address``
    inside the object and, when given, to that address too (a bundle's
    anchoring gateway); the object must name this report (its SHA-256, boot
    and seq).
    """
    from gateway.receipts import _recover

    if not isinstance(attested, dict):
        raise AttestError("attested is not an object")
    version = attested.get("v")
    if version not in (1, 2):
        raise AttestError("attested version %r is not 1 or 2" % (version,))
    members = MEMBERS if version == 1 else MEMBERS_V2
    extra = set(attested) - set(members)
    missing = set(members) - set(attested)
    if extra or missing:
        raise AttestError(
            "attested has %s"
            % "; ".join(
                p
                for p in (
                    "unknown members " + ", ".join(sorted(extra)) if extra else "",
                    "no " + ", ".join(sorted(missing)) if missing else "",
                )
                if p
            )
        )
    ch = attested["challenges"]
    if (
        not isinstance(ch, dict)
        or set(ch) != {"passed", "failed", "timed_out"}
        or not all(type(v) is int for v in ch.values())
    ):
        raise AttestError("attested challenges must be {passed, failed, timed_out} integers")
    if (
        not isinstance(attested["flags"], list)
        or not all(f in FLAGS for f in attested["flags"])
        or attested["flags"] != sorted(attested["flags"])
    ):
        raise AttestError("attested flags must be a sorted list of %s" % ", ".join(FLAGS))
    if attested["bw_up"] is not None and type(attested["bw_up"]) is not int:
        raise AttestError("attested bw_up must be an integer or null")
    try:
        sig = bytes.fromhex(attested["signature"])
    except (TypeError, ValueError):
        raise AttestError("attested signature is not hex") from None
    if len(sig) != 65:
        raise AttestError("attested signature must be 65 bytes")
    body = {k: v for k, v in attested.items() if k not in ("signature", "group")}
    if version == 1:
        message = canonical(body)
    else:
        root, size = _check_group(attested["group"], canonical(body))
        message = group_message(root, size)
    signer = _recover(message, sig)
    claimed_signer = str(attested["gateway_address"])
    if signer is None or signer.lower() != claimed_signer.lower():
        raise AttestError("attested signature does not match its gateway_address %s" % claimed_signer)
    if gateway_address is not None and signer.lower() != gateway_address.lower():
        raise AttestError("attested is signed by %s, not by the anchoring gateway %s" % (signer, gateway_address))
    if attested["report_sha256"] != hashlib.sha256(cose).hexdigest():
        raise AttestError("attested is about another report (report_sha256 differs)")
    if attested["boot"] != boot or attested["seq"] != seq:
        raise AttestError(
            "attested boot/seq (%r, %r) differ from the report's (%r, %r)"
            % (attested["boot"], attested["seq"], boot, seq)
        )
    return attested


def _check_group(group: Any, body: bytes) -> tuple[bytes, int]:
    """(root, size) of a v2 object's ``group``, once ``body``'s inclusion proof leads to that root."""
    if not isinstance(group, dict) or set(group) != set(GROUP_MEMBERS):
        raise AttestError("attested group must have exactly %s" % ", ".join(GROUP_MEMBERS))
    index, size, proof_hex = group["index"], group["size"], group["proof"]
    if type(index) is not int or type(size) is not int or not 0 <= index < size:
        raise AttestError("attested group index and size must be integers, 0 <= index < size")
    try:
        root = bytes.fromhex(group["root"])
        proof = [bytes.fromhex(p) for p in proof_hex] if isinstance(proof_hex, list) else None
    except (TypeError, ValueError):
        raise AttestError("attested group root and proof must be hex") from None
    if proof is None or len(root) != 32:
        raise AttestError("attested group root must be 32 bytes of hex, proof a list of hashes")
    if not merkle.verify_inclusion(merkle.leaf_hash(body), index, size, proof, root):
        raise AttestError("attested body is not in its signed group (inclusion proof fails)")
    return root, size


# -- the pipeline stage -------------------------------------------------------

_TO_ATTEST = (
    "SELECT r.id, r.device_id, r.boot, r.seq, r.cose, r.received_at, p.outcome, p.bw_up, d.fleet "
    "FROM reports r "
    "LEFT JOIN probe_runs p ON p.device_id = r.device_id AND p.boot = r.boot AND p.seq = r.seq "
    "LEFT JOIN devices d ON d.device_id = r.device_id "
    "WHERE r.id > ? AND r.id <= ? ORDER BY r.id LIMIT ?"
)
_INSERT = (
    "INSERT INTO attestations(report_id, device_id, boot, seq, bw_up, storage_bytes, "
    "challenges_passed, challenges_failed, challenges_timed_out, flags, body, signature, at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
CURSOR = "cursor:attested"
# A report accepted while its probe run was still arriving waits this long for
# the run's outcome (gateway/probe_listener.py); after that the run counts as
# out of order.  Later reports wait behind it, so attestations stay in order.
PENDING_WAIT_S = 5.0


def claims_of(cose: bytes) -> dict[Any, Any]:
    """Claims of a report the gateway verified and stored: plain decoding, no re-verification.

    The bytes were checked in full (structure, determinism, signature) before
    they were stored, so the payload is where the one valid form puts it.
    """
    payload = payload_at(cose)
    return dict(cbor2.loads(payload if payload is not None else cbor2.loads(cose).value[2]))


class AttestStage:
    """Attests every accepted report once, in report order, before its `verified` message.

    The rows and the cursor move in one transaction, so a crash repeats no
    signature and skips no report; ``cursor`` is what the publisher may send.
    """

    CHUNK = 16 * GROUP  # rows read per query: whole groups

    def __init__(
        self,
        store: Store,
        gateway_id: str,
        gateway_address: str,
        sign: Callable[[bytes], bytes],
        standing: StandingFn | None = None,
        clock: Callable[[], float] | None = None,
        on_claims: Callable[[int, dict[Any, Any]], None] | None = None,
    ) -> None:
        import time

        self.store = store
        # Told each report's decoded claims, for the messages built later (gateway/republish.py ClaimsText).
        self.on_claims = on_claims
        self.gateway_id = gateway_id
        self.gateway_address = gateway_address
        self.sign = sign
        self.standing = standing or storage_standing_source()
        self.clock = clock or time.time
        stored = store.meta(CURSOR)
        if stored is None:
            # First start on this database: history is not attested retroactively
            # (nothing was measured for it); from here on, every report.
            stored = str(store.max_ids()[0])
            store.set_meta(CURSOR, stored)
        self.cursor = int(stored)
        # Since the last drain(), per (fleet, key): key "attested", "measured" (a
        # bw_up was measured), or a flag.
        self.counts: dict[tuple[str, str], int] = {}

    def step(self) -> int:
        """Attest what was accepted before this step began; returns how many.

        Bounded by the newest report when the step starts: under steady
        ingest there is always a newer row, and a step that chased them kept
        the pipeline's pass from ever reaching the batcher and anchorer (the
        sustained run of bench group 1 receipted almost nothing while load
        lasted, docs/performance.md).
        """
        done = 0
        newest = self.store.max_ids()[0]
        while self.cursor < newest:
            now = self.clock()
            rows = self.store.db.execute(_TO_ATTEST, (self.cursor, newest, self.CHUNK)).fetchall()
            waiting = next((i for i, r in enumerate(rows) if r[6] == "pending" and r[5] > now - PENDING_WAIT_S), None)
            if waiting is not None:
                rows = rows[:waiting]
            if not rows:
                break
            out = []
            bodies: list[bytes] = []
            gave_up = []
            standings = self.standing(self.store, [r[1] for r in rows], now)
            for rid, device_id, boot, seq, cose, _, outcome, bw_up, fleet in rows:
                if outcome == "pending":
                    gave_up.append((device_id, boot, seq))
                cose = bytes(cose)
                standing = standings.get(device_id, NOTHING_PROVEN)
                measured = bw_up if outcome == "checked" else None
                claims = claims_of(cose)
                if self.on_claims is not None:
                    self.on_claims(rid, claims)
                flags = flags_for(claims, measured, standing)
                bodies.append(
                    canonical(
                        build(
                            self.gateway_id,
                            self.gateway_address,
                            device_id,
                            boot,
                            seq,
                            cose,
                            now,
                            measured,
                            standing,
                            flags,
                        )
                    )
                )
                out.append(
                    [
                        rid,
                        device_id,
                        boot,
                        seq,
                        measured,
                        standing[0],
                        standing[1],
                        standing[2],
                        standing[3],
                        ",".join(flags),
                        "",
                        b"",
                        now,
                    ]
                )
                for key in flags + ["attested"] + (["measured"] if measured is not None else []):
                    k = (fleet or "-", key)
                    self.counts[k] = self.counts.get(k, 0) + 1
            # One signature per GROUP reports (v2); each row keeps its body with
            # its `group` member, and the group's signature.
            for start in range(0, len(bodies), GROUP):
                texts, sig = signed_group(bodies[start : start + GROUP], self.sign)
                for row, text in zip(out[start : start + GROUP], texts):
                    row[10], row[11] = text, sig
            with self.store._tx():
                self.store.db.executemany(_INSERT, out)
                self.store.db.executemany(
                    "UPDATE probe_runs SET outcome=CASE WHEN chunks=0 THEN 'absent' ELSE "
                    "'out_of_order' END WHERE device_id=? AND boot=? AND seq=? AND "
                    "outcome='pending'",
                    gave_up,
                )
                self.store.db.execute(
                    "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (CURSOR, str(rows[-1][0])),
                )
            self.cursor = rows[-1][0]
            done += len(out)
            if waiting is not None:
                break
        return done

    def drain(self) -> dict[tuple[str, str], int]:
        """(fleet, key) -> count since the last call (for the pipeline's metrics)."""
        out, self.counts = self.counts, {}
        return out


def attested_json(store: Store, report_ids: list[int]) -> dict[int, str]:
    """report id -> the attested object as JSON text, for the reports that have one."""
    out: dict[int, str] = {}
    for i in range(0, len(report_ids), 500):
        chunk = report_ids[i : i + 500]
        for rid, body, sig in store.db.execute(
            "SELECT report_id, body, signature FROM attestations WHERE report_id IN (%s)" % ",".join("?" * len(chunk)),
            chunk,
        ):
            out[rid] = to_json(body, bytes(sig))
    return out


def attestation_counts(store: Store) -> dict[str, Any]:
    """Totals for `surge gateway status`: attested reports, with a measured rate, by flag; the same
    per fleet under "fleets" (a device no longer enrolled counts under "-")."""
    fleets: dict[str, dict[str, Any]] = {}
    for fleet, text, n, measured in store.db.execute(
        "SELECT d.fleet, a.flags, COUNT(*), COUNT(a.bw_up) FROM attestations a "
        "LEFT JOIN devices d ON d.device_id = a.device_id GROUP BY d.fleet, a.flags"
    ):
        f = fleets.setdefault(fleet or "-", {"reports": 0, "bw_measured": 0, "flags": {}})
        f["reports"] += int(n)
        f["bw_measured"] += int(measured)
        for flag in text.split(",") if text else []:
            f["flags"][flag] = f["flags"].get(flag, 0) + int(n)
    flags: dict[str, int] = {}
    for f in fleets.values():
        f["flags"] = dict(sorted(f["flags"].items()))
        for flag, n in f["flags"].items():
            flags[flag] = flags.get(flag, 0) + n
    return {
        "reports": sum(f["reports"] for f in fleets.values()),
        "bw_measured": sum(f["bw_measured"] for f in fleets.values()),
        "flags": dict(sorted(flags.items())),
        "fleets": dict(sorted(fleets.items())),
    }


def probe_counts(store: Store) -> dict[str, dict[str, dict[str, int]]]:
    """fleet -> {"runs": outcome -> count, "chunks": reason -> count} (the probe_counts table)."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for fleet, kind, outcome, n in store.db.execute(
        "SELECT fleet, kind, outcome, count FROM probe_counts ORDER BY fleet, kind, outcome"
    ):
        out.setdefault(fleet or "-", {"runs": {}, "chunks": {}})["runs" if kind == "run" else "chunks"][outcome] = n
    return out
