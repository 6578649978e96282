"""Mutation fuzzing of the parsers and the gateway's whole verify path, in process.

Shared by tests/test_fuzz.py (CI: a bounded seeded run), bench/soak.py (a
long run) and bench/fuzz_atheris.py (coverage-guided, when atheris installs).

Targets, and what each may raise (anything else is a crash):

- ``firmware_shim.cbor.loads``: ``cbor.CBORError`` only;
- ``firmware_shim.cose.parse_sign1``: ``cose.COSEError`` only;
- ``gateway.envelope.parse``: ``cose.COSEError`` only;
- ``gateway.verify.Verifier.verify`` with an in-memory registry: nothing; it
  returns an outcome for every input.

Oracles: an input the verifier accepts (or acknowledges as a duplicate) must
be byte-identical to a report the test's device key actually signed, and its
claims must follow the protocol subset (docs/protocol.md §4.4: integer or text
keys, no null, no floats, no tags). The harness signs mutated claim maps with
the device key too, so the claim checks behind the signature are exercised,
not only the parsers in front of it.
"""

from __future__ import annotations

import hashlib
import random
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from surge_protocol import claims as C
from agent import report
from boards import BoardProfile
import boards
from firmware_shim import cbor, cose
from gateway import envelope
from gateway.store import Device, DeviceState
from gateway.verify import Accepted, Duplicate, Limits, Rejection, Verifier

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
# Fixed device key: the corpus and any crash reproduce from the same seeds.
SECRET = hashlib.sha256(b"surge fuzz device").digest()
SLOW_INPUT_S = 1.0  # one input taking longer than this counts as a hang
NOW = 1_795_000_000.0

INTERESTING = (
    0x00,
    0x01,
    0x17,
    0x18,
    0x19,
    0x1A,
    0x1B,
    0x1C,
    0x1F,
    0x20,
    0x3F,
    0x40,
    0x58,
    0x5F,
    0x60,
    0x7F,
    0x80,
    0x9F,
    0xA0,
    0xBF,
    0xC0,
    0xD2,
    0xDF,
    0xF4,
    0xF5,
    0xF6,
    0xF7,
    0xF9,
    0xFA,
    0xFB,
    0xFF,
)


def _public(secret: bytes) -> bytes:
    from nacl.signing import SigningKey

    return bytes(SigningKey(secret).verify_key)


PUBLIC = _public(SECRET)
DEVICE_ID = C.device_id(PUBLIC)


def sign(claims: Any) -> bytes:
    return bytes(report.sign_report(SECRET, PUBLIC, claims))


def seed_claims() -> list[dict[Any, Any]]:
    """Valid claim maps covering every optional claim at least once."""
    out = []
    prev = None
    for seq in range(1, 9):
        c = report.build_claims(
            seq,
            3,
            100 + seq,
            60,
            iat=int(NOW) - 10 if seq % 2 else None,
            prev=prev,
            storage=(4_000_000, 1_000_000) if seq != 3 else None,
            net=(1000 * seq, 2000) if seq != 4 else None,
            bw=(10_000, 20_000 if seq != 5 else None),
            rssi=-60 if seq % 3 else None,
            link_mbps=100 if seq == 6 else None,
            dropped=seq % 2,
            errors={"storage": "ENOENT"} if seq == 3 else None,
            nonce=bytes(range(16)) if seq == 7 else None,
        )
        if seq == 8:
            c[C.UEID] = b"\x02" + bytes(16)
            c[C.SWNAME] = "surge-agent"
            c[C.SWVERSION] = ["0.1.0"]
        out.append(c)
        prev = C.prev_hash(sign(c))
    return out


@dataclass
class Registry:
    """The verifier's world: one enrolled device, a last accepted report at seq 0."""

    signed: set[bytes] = field(default_factory=set)
    seen_reports: dict[tuple[str, int, int], bytes] = field(default_factory=dict)
    board: BoardProfile = field(default_factory=lambda: boards.load("rpi-4"))

    def device(self) -> Device:
        return Device(DEVICE_ID, PUBLIC, "rpi-4", "demo", "", 0.0, None, None)

    def verifier(self) -> Verifier:
        dev = self.device()
        first = sign(report.build_claims(0, 3, 99, 60))
        self.signed.add(first)
        self.seen_reports[(DEVICE_ID, 3, 0)] = first
        state = DeviceState(3, 0, C.prev_hash(first))
        return Verifier(
            lambda d: dev if d == DEVICE_ID else None,
            lambda d: state if d == DEVICE_ID else None,
            lambda d, b, s: self.seen_reports.get((d, b, s)),
            lambda name: self.board if name == "rpi-4" else None,
            Limits(max_bytes=4096),
        )


class Crash(Exception):
    def __init__(self, target: str, data: bytes, detail: str) -> None:
        super().__init__("%s crashed on %s: %s" % (target, data.hex(), detail))
        self.target = target
        self.data = data
        self.detail = detail


def _subset(v: Any) -> bool:
    """The protocol subset of §4.4 for a decoded payload: integer or text keys,
    no null, no floats, no tags."""
    if isinstance(v, dict):
        return all(isinstance(k, (int, str)) and not isinstance(k, bool) and _subset(x) for k, x in v.items())
    if isinstance(v, list):
        return all(_subset(x) for x in v)
    return isinstance(v, (int, bytes, str, bool))


def _u(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**64


def _b(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, bytes) and lo <= len(v) <= hi


def claims_problem(c: Any) -> str | None:
    """Why ``c`` breaks docs/protocol.md §4.2/§4.4, written from the CDDL, independently of
    gateway/verify.py; None when it follows them."""
    if not isinstance(c, dict) or not _subset(c):
        return "outside the §4.4 subset"
    top: dict[int, Callable[[Any], bool]] = {
        C.IAT: _u,
        C.NONCE: lambda v: _b(v, 8, 64),
        C.UEID: lambda v: _b(v, 7, 33),
        C.HWMODEL: lambda v: _b(v, 1, 32),
        C.UPTIME: _u,
        C.BOOTCOUNT: _u,
        C.SWNAME: lambda v: isinstance(v, str),
        C.SWVERSION: lambda v: isinstance(v, list) and len(v) == 1 and isinstance(v[0], str),
        C.SURGE: lambda v: isinstance(v, dict),
    }
    for k, ok in top.items():
        if k in c and not ok(c[k]):
            return "claim %d mistyped" % k
    for k in (C.UPTIME, C.BOOTCOUNT, C.SURGE):
        if k not in c:
            return "claim %d missing" % k
    s = c[C.SURGE]
    inner: dict[int, Callable[[Any], bool]] = {
        C.SEQ: _u,
        C.STORAGE_TOTAL: _u,
        C.STORAGE_FREE: _u,
        C.NET_RX: _u,
        C.NET_TX: _u,
        C.BW_UP: _u,
        C.BW_DOWN: _u,
        C.RSSI: lambda v: isinstance(v, int) and not isinstance(v, bool) and -150 <= v <= 0,
        C.LINK_MBPS: _u,
        C.INTERVAL: lambda v: _u(v) and v > 0,
        C.PREV: lambda v: _b(v, 16, 16),
        C.SYNCED: lambda v: isinstance(v, bool),
        C.DROPPED: _u,
        C.ERRORS: lambda v: (
            isinstance(v, dict) and len(v) > 0 and all(isinstance(a, str) and isinstance(b, str) for a, b in v.items())
        ),
    }
    for k, ok in inner.items():
        if k in s and not ok(s[k]):
            return "surge claim %d mistyped" % k
    for k in (C.SEQ, C.INTERVAL, C.SYNCED, C.DROPPED):
        if k not in s:
            return "surge claim %d missing" % k
    if s[C.SYNCED] != (C.IAT in c):
        return "iat present iff synced broken"
    return None


class Harness:
    def __init__(self) -> None:
        self.registry = Registry()
        self.verifier = self.registry.verifier()
        self.seeds: list[bytes] = []
        self.claims = seed_claims()
        for c in self.claims:
            data = sign(c)
            self.registry.signed.add(data)
            self.seeds.append(data)
        self.seeds.append(
            sign(report.build_birth("rpi-4", "surge-agent", "0.1.0", 3, PUBLIC, ["storage"], "cpython", int(NOW)))
        )
        self.registry.signed.add(self.seeds[-1])
        self.counts: dict[str, int] = {"inputs": 0, "accepted": 0, "signed_mutants": 0}
        self.outcomes: dict[str, int] = {}
        self.slowest = 0.0

    # -- running one input through every target ---------------------------------
    def run_one(self, data: bytes) -> None:
        self.counts["inputs"] += 1
        t0 = time.perf_counter()
        self._call("cbor.loads", lambda: cbor.loads(data), cbor.CBORError, data)
        msg = self._call("cose.parse_sign1", lambda: cose.parse_sign1(data), cose.COSEError, data)
        if msg is not None and not all(
            isinstance(k, (int, str)) and not isinstance(k, bool) for k in list(msg.header) + list(msg.unprotected)
        ):
            raise Crash("oracle", data, "parse_sign1 took a header label that is not an integer or text")
        self._call("envelope.parse", lambda: envelope.parse(data), cose.COSEError, data)
        outcome = self._call("Verifier.verify", lambda: self.verifier.verify(DEVICE_ID, data, NOW), None, data)
        elapsed = time.perf_counter() - t0
        self.slowest = max(self.slowest, elapsed)
        if elapsed > SLOW_INPUT_S:
            raise Crash("hang", data, "%.2f s for one input" % elapsed)
        name = type(outcome).__name__ if not isinstance(outcome, Rejection) else outcome.reason
        self.outcomes[name] = self.outcomes.get(name, 0) + 1
        if isinstance(outcome, (Accepted, Duplicate)):
            self.counts["accepted"] += 1
            if data not in self.registry.signed:
                raise Crash("oracle", data, "accepted bytes the device never signed (%r)" % (outcome,))
            problem = claims_problem(outcome.claims) if isinstance(outcome, Accepted) else None
            if problem is not None and isinstance(outcome, Accepted):
                raise Crash(
                    "oracle", data, "accepted claims that break the protocol (%s): %r" % (problem, outcome.claims)
                )
        elif not isinstance(outcome, Rejection):
            raise Crash("Verifier.verify", data, "returned %r" % (outcome,))

    @staticmethod
    def _call(target: str, fn: Callable[[], Any], allowed: type[BaseException] | None, data: bytes) -> Any:
        try:
            return fn()
        except Exception as exc:
            if allowed is not None and isinstance(exc, allowed):
                return None
            raise Crash(target, data, "".join(traceback.format_exception_only(type(exc), exc)).strip()) from exc

    # -- mutations ------------------------------------------------------------------
    def mutate(self, rng: random.Random) -> bytes:
        r = rng.random()
        if r < 0.12:
            return self._signed_mutant(rng)
        data = bytearray(rng.choice(self.seeds))
        for _ in range(1 + int(rng.expovariate(1.0))):
            self._byte_mutation(rng, data)
        return bytes(data)

    def _byte_mutation(self, rng: random.Random, data: bytearray) -> None:
        op = rng.randrange(10)
        n = len(data)
        if n == 0:
            data.append(rng.randrange(256))
            return
        i = rng.randrange(n)
        if op == 0:
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[i] = rng.choice(INTERESTING)
        elif op == 2:
            data[i] = rng.randrange(256)
        elif op == 3:
            data.insert(i, rng.choice(INTERESTING))
        elif op == 4:
            del data[i : i + rng.randrange(1, 9)]
        elif op == 5:
            del data[i:]
        elif op == 6:  # duplicate a chunk
            j = rng.randrange(i, min(n, i + 32) + 1)
            data[i:i] = data[i:j]
        elif op == 7:  # splice from another seed
            other = rng.choice(self.seeds)
            j = rng.randrange(len(other))
            data[i:] = other[j : j + rng.randrange(1, 64)] + data[i:]
        elif op == 8:  # deep nesting or a huge length in the middle
            data[i:i] = bytes([rng.choice((0x81, 0xA1, 0xD2, 0x9F))]) * rng.randrange(1, 600)
        else:
            data[i:i] = rng.choice(
                (
                    b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",
                    b"\x9b\x00\x00\x00\x01\x00\x00\x00\x00",
                    b"\xbb\x7f\xff\xff\xff\xff\xff\xff\xff",
                    b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff",
                    b"\x3b\xff\xff\xff\xff\xff\xff\xff\xff",
                    b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x00",
                    b"\xf9\x7c\x00",
                    b"\xf7",
                    b"\xf6",
                    b"\xff",
                    b"\xc1\x00",
                )
            )

    _ODD_VALUES: tuple[Any, ...] = (
        None,
        True,
        False,
        -1,
        0,
        2**64 - 1,
        -(2**64),
        b"",
        b"\x00" * 16,
        b"\x00" * 40,
        "",
        "x" * 40,
        [],
        {},
        [1, [2]],
        {"a": "b"},
        {1: 2},
        cbor.Tag(1, 0),
    )

    def _signed_mutant(self, rng: random.Random) -> bytes:
        """A claims map changed at the structure level and signed with the device key."""
        claims = _copy(rng.choice(self.claims))
        for _ in range(rng.randrange(1, 4)):
            target = claims
            if C.SURGE in claims and isinstance(claims[C.SURGE], dict) and rng.random() < 0.7:
                target = claims[C.SURGE]
            op = rng.randrange(4)
            keys = list(target)
            if op == 0 and keys:
                del target[rng.choice(keys)]
            elif op == 1 and keys:
                target[rng.choice(keys)] = _copy(rng.choice(self._ODD_VALUES))
            elif op == 2:
                key: Any = rng.choice(
                    (
                        True,
                        False,
                        None,
                        -1,
                        0,
                        15,
                        23,
                        24,
                        255,
                        256,
                        65536,
                        "seq",
                        b"k",
                        C.IAT,
                        C.NONCE,
                        C.SEQ,
                        C.PREV,
                        C.RSSI,
                        C.INTERVAL,
                    )
                )
                target[key] = _copy(rng.choice(self._ODD_VALUES))
            else:
                target[rng.choice(keys) if keys else 1] = rng.randrange(-200, 2**40)
        try:
            data = sign(claims)
        except (cbor.CBORError, TypeError, ValueError):
            return rng.choice(self.seeds)
        self.registry.signed.add(data)
        self.counts["signed_mutants"] += 1
        return data

    # -- loops --------------------------------------------------------------------------
    def run(self, n: int, seed: int, on_crash: Callable[[Crash], object] | None = None) -> list[Crash]:
        """Run ``n`` mutated inputs from ``seed``; returns the crashes (also passed to ``on_crash``)."""
        rng = random.Random(seed)
        crashes: list[Crash] = []
        for data in self.seeds:
            self.run_one(data)
        for _ in range(n):
            data = self.mutate(rng)
            try:
                self.run_one(data)
            except Crash as c:
                crashes.append(c)
                if on_crash is not None:
                    on_crash(c)
        return crashes


def _copy(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


def save_crash(c: Crash, corpus: Path = CORPUS) -> Path:
    """Keep a crashing input as tests/fuzz_corpus/<target>-<sha256 prefix>.bin."""
    corpus.mkdir(parents=True, exist_ok=True)
    name = "%s-%s.bin" % (c.target.replace(".", "_"), hashlib.sha256(c.data).hexdigest()[:16])
    path = corpus / name
    path.write_bytes(c.data)
    return path


def replay(data: bytes, harness: "Harness | None" = None) -> None:
    """Run one corpus input; a report the fixed fuzz key signed counts as signed."""
    h = harness or Harness()
    msg = None
    try:
        msg = envelope.parse(data)
    except cose.COSEError:
        pass
    if msg is not None and msg.kid == C.kid(PUBLIC) and envelope.verify(msg, PUBLIC):
        h.registry.signed.add(data)
    h.run_one(data)


def corpus_files(corpus: Path = CORPUS) -> list[Path]:
    return sorted(corpus.glob("*.bin")) if corpus.is_dir() else []
