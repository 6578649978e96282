"""Storage audit, sans I/O: plot blocks, commands, answers, their check (docs/protocol.md §10).

A device proves storage by holding a *plot*: ``blocks`` blocks of
``block_size`` bytes that the gateway derives from a secret seed only the
gateway knows, streamed to the device once.  The device cannot regenerate
a block it threw away (it never sees the seed), so answering a challenge
over k random blocks means it kept them.  The gateway keeps only the seed
and recomputes any block on demand.

Nothing here touches the network, the clock or the database: the audit
stage (gateway/storage_audit/stage.py) does that and calls these.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from typing import Sequence

# Challenge outcomes (audit_challenges.outcome, the standing, the metrics).
PASSED = "passed"
FAILED = "failed"  # a wrong answer, or the device said it lacks a block
TIMED_OUT = "timed_out"  # no answer in time, on the first try and every retry

# Block sizes by runtime: a MicroPython board receives each block as one
# JSON command with the data in hex, and a fragmented 48 KB heap has no
# room for much more than ~600 bytes in one piece; a CPython device takes
# larger blocks, so that a plot of MiBs needs fewer messages.
BLOCK_SMALL = 256
BLOCK_LARGE = 4096
MIN_BLOCK, MAX_BLOCK = 64, 4096
NONCE_BYTES = 16
SEED_BYTES = 32
# Biggest audit message a device may send: an answer is ~110 bytes.
MAX_AUDIT_BYTES = 512
MAX_K = 64


class AuditError(ValueError):
    """A device's audit message that cannot be used; ``reason`` is the counted code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__("%s: %s" % (reason, detail))
        self.reason = reason


def block(seed: bytes, plot: int, index: int, size: int) -> bytes:
    """Block ``index`` of plot ``plot``: the first ``size`` bytes of
    SHA-256(seed || u32be(plot) || u32be(index) || u32be(0)) || ... u32be(1)) || ..."""
    head = seed + struct.pack(">II", plot, index)
    out = b"".join(hashlib.sha256(head + struct.pack(">I", j)).digest() for j in range((size + 31) // 32))
    return out[:size]


def proof(nonce: bytes, blocks: Sequence[bytes]) -> bytes:
    """The answer to a challenge: SHA-256(nonce || block_i1 || ... || block_ik)."""
    h = hashlib.sha256(nonce)
    for b in blocks:
        h.update(b)
    return h.digest()


def expected_proof(seed: bytes, plot: int, size: int, nonce: bytes, indices: Sequence[int]) -> bytes:
    """What an honest device answers, from the seed alone."""
    return proof(nonce, [block(seed, plot, i, size) for i in indices])


def choose_indices(entropy: bytes, stored: int, k: int) -> list[int]:
    """k block indices in [0, stored), drawn with replacement from ``entropy``
    (so a device that kept a fraction 1-f of them survives with exactly (1-f)^k)."""
    if stored < 1 or not 1 <= k <= MAX_K:
        raise ValueError("need stored >= 1 and 1 <= k <= %d" % MAX_K)
    out = []
    for j in range(k):
        r = int.from_bytes(hashlib.sha256(entropy + struct.pack(">I", j)).digest()[:8], "big")
        out.append(r % stored)  # bias < stored / 2^64: negligible
    return out


def block_size_for(runtime: str) -> int:
    return BLOCK_SMALL if runtime == "micropython" else BLOCK_LARGE


def plot_blocks(limit_bytes: int, block_size: int, free_bytes: int | None) -> int:
    """Blocks in a device's plot: the configured slice, capped by the free
    storage the device last reported (a device that reports none gets the slice)."""
    cap = limit_bytes if free_bytes is None else min(limit_bytes, free_bytes)
    return max(0, cap // block_size)


def survival(f: float, k: int, challenges: int = 1) -> float:
    """Chance that a device missing a fraction ``f`` of its plot passes
    ``challenges`` challenges of ``k`` blocks each."""
    return float((1.0 - f) ** (k * challenges))


def challenges_to_catch(f: float, k: int, confidence: float) -> int:
    """Challenges of k blocks needed to catch a device missing a fraction f with ``confidence``."""
    return math.ceil(math.log(1.0 - confidence) / (k * math.log(1.0 - f)))


# -- commands (gateway -> device, on cmd) -------------------------------------

STORE, CHALLENGE = 1, 2


def store_command(plot: int, index: int, data: bytes) -> bytes:
    """01 || u32be(plot) || u32be(index) || block (binary: see agent/storage_proof.py)."""
    return struct.pack(">BII", STORE, plot, index) + data


def challenge_command(plot: int, nonce: bytes, indices: Sequence[int], deadline_ms: int) -> bytes:
    """02 || u32be(plot) || u32be(deadline ms) || nonce(16) || u32be(index) for each index."""
    return struct.pack(">BII", CHALLENGE, plot, deadline_ms) + nonce + struct.pack(">%dI" % len(indices), *indices)


# -- device messages (device -> gateway, on audit) ----------------------------


@dataclass(frozen=True)
class Stored:
    """The device wrote block ``index`` of ``plot``."""

    plot: int
    index: int


@dataclass(frozen=True)
class Answer:
    """The device's answer to the challenge with ``nonce``; ``proof`` None when it said ``error``."""

    plot: int
    nonce: bytes
    proof: bytes | None
    error: str | None


def _uint(doc: dict[str, object], key: str) -> int:
    v = doc.get(key)
    if type(v) is not int or not 0 <= v < 1 << 32:
        raise AuditError("malformed", "%s is not a 32-bit unsigned integer" % key)
    return v


def _hex(doc: dict[str, object], key: str, size: int) -> bytes:
    v = doc.get(key)
    if not isinstance(v, str) or len(v) != 2 * size:
        raise AuditError("malformed", "%s is not %d bytes of hex" % (key, size))
    try:
        return bytes.fromhex(v)
    except ValueError:
        raise AuditError("malformed", "%s is not hex" % key) from None


def parse_audit(payload: bytes) -> Stored | Answer:
    """One message from a device's ``audit`` topic, or AuditError (oversized, malformed)."""
    if len(payload) > MAX_AUDIT_BYTES:
        raise AuditError("oversized", "%d bytes, the limit is %d" % (len(payload), MAX_AUDIT_BYTES))
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise AuditError("malformed", "not JSON") from None
    if not isinstance(doc, dict):
        raise AuditError("malformed", "not a JSON object")
    kind = doc.get("t")
    if kind == "stored":
        return Stored(_uint(doc, "plot"), _uint(doc, "index"))
    if kind == "answer":
        error = doc.get("error")
        if error is not None:
            if not isinstance(error, str) or len(error) > 64:
                raise AuditError("malformed", "error is not a short string")
            return Answer(_uint(doc, "plot"), _hex(doc, "nonce", NONCE_BYTES), None, error)
        return Answer(_uint(doc, "plot"), _hex(doc, "nonce", NONCE_BYTES), _hex(doc, "proof", 32), None)
    raise AuditError("malformed", "t is neither 'stored' nor 'answer'")


def judge(answer: Answer, seed: bytes, plot: int, size: int, nonce: bytes, indices: Sequence[int]) -> str:
    """PASSED or FAILED for an answer to the open challenge (nonce, indices) on ``plot``."""
    if answer.proof is None or answer.plot != plot:
        return FAILED
    good = expected_proof(seed, plot, size, nonce, indices)
    return PASSED if answer.proof == good else FAILED
