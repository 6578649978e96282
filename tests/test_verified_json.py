"""The `verified` JSON writer gives exactly what json.dumps of the named claims gives.

gateway/republish.py writes the `verified` message (docs/protocol.md §2.5)
directly instead of building a dict of named claims for json.dumps, and
finds a stored report's payload by position instead of decoding the whole
envelope.  Both are checked here against the plain way, on claims within the
protocol subset (what verification lets through) and on signed reports of
every payload length class.
"""

from __future__ import annotations

import json
from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from surge_protocol import claims as C
from firmware_shim import cbor as portable_cbor
from firmware_shim import cose
from gateway.attest import claims_of
from gateway.republish import ClaimsText, claims_json, verified_body

SECRET = bytes(range(32))

# The protocol subset (§4.4): integers of 64 bits, bools, byte and text
# strings, arrays and maps with integer or text keys; no null or floats.
scalars = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.booleans(),
    st.binary(max_size=40),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.integers(-300, 300), st.text(max_size=4)), inner, max_size=4),
    ),
    max_leaves=20,
)
# Registered keys, keys of the surge map, and unregistered ones that may share
# a name ("claim_5" from 5 and from "5").
top_keys = st.one_of(st.sampled_from(sorted(C.NAMES)), st.integers(-70000, 70000), st.text(max_size=3))
surge_keys = st.one_of(st.sampled_from(sorted(C.SURGE_NAMES)), st.integers(-40, 40), st.text(max_size=3))
claims_maps = st.builds(
    lambda top, surge: {**top, C.SURGE: surge} if surge is not None else top,
    st.dictionaries(top_keys, values, max_size=8),
    st.one_of(st.none(), st.dictionaries(surge_keys, values, max_size=10)),
)


def reference(claims: dict[Any, Any], cose_bytes: bytes, batch: dict[str, Any] | None, gap: bool) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "device": "0011223344556677",
            "fleet": "fleet-é",
            "board": "rpi4",
            "boot": 3,
            "seq": 2**40,
            "received_at": round(1764000000.1235 * 1000),
            "gap": gap,
            "claims": C.named(claims),
            "report": cose_bytes.hex(),
            "batch": batch,
        },
        separators=(",", ":"),
    ).encode()


@settings(max_examples=500, deadline=None)
@given(
    claims=claims_maps,
    gap=st.booleans(),
    batch=st.one_of(st.none(), st.just({"status": "confirmed", "batch_seq": 7, "root": "ab" * 32})),
)
def test_writer_matches_json_dumps_of_named_claims(
    claims: dict[Any, Any], gap: bool, batch: dict[str, Any] | None
) -> None:
    assert claims_json(claims) == json.dumps(C.named(claims), separators=(",", ":"))
    body = verified_body(
        "0011223344556677",
        "fleet-é",
        "rpi4",
        3,
        2**40,
        1764000000.1235,
        gap,
        claims,
        b"\xd2\x84",
        None if batch is None else json.dumps(batch, separators=(",", ":")),
    )
    assert body == reference(claims, b"\xd2\x84", batch, gap)
    json.loads(body)


def _signed(claims: dict[Any, Any]) -> bytes:
    payload = portable_cbor.dumps(claims)  # deterministic, as devices send
    return bytes(cose.sign1(payload, SECRET, b"\x01" * 8))


@settings(max_examples=200, deadline=None)
@given(padding=st.integers(min_value=0, max_value=900))
def test_payload_found_by_position_in_every_length_class(padding: int) -> None:
    # Payload lengths below 24, below 256 and above use three head forms.
    claims: dict[Any, Any] = {C.UPTIME: 1}
    if padding:
        claims[C.SWNAME] = "x" * padding
    report = _signed(claims)
    assert claims_of(report) == dict(cbor2.loads(cbor2.loads(report).value[2])) == claims


def test_writer_on_a_real_report() -> None:
    claims = {
        C.IAT: 1764000000,
        C.UPTIME: 100,
        C.BOOTCOUNT: 1,
        C.SURGE: {
            C.SEQ: 0,
            C.STORAGE_TOTAL: 64 * 10**9,
            C.PREV: bytes(16),
            C.SYNCED: True,
            C.ERRORS: {"net": 'no link "eth0"\n'},
            C.INTERVAL: 60,
            C.DROPPED: 0,
        },
    }
    report = _signed(claims)
    decoded = dict(cbor2.loads(cbor2.loads(report).value[2]))
    assert verified_body(
        "0011223344556677", "fleet-é", "rpi4", 3, 2**40, 1764000000.1235, False, claims_of(report), report, None
    ) == reference(decoded, report, None, False)


def test_claims_text_gives_the_same_bytes_hit_or_miss_and_stays_bounded() -> None:
    reports = [_signed({C.IAT: 1764000000 + i, C.UPTIME: i, C.SURGE: {C.SEQ: i}}) for i in range(4)]
    texts = ClaimsText(cap=2)
    for i, r in enumerate(reports):
        texts.put(i, claims_of(r))
    assert len(texts._texts) == 2  # the two oldest went
    for i, r in enumerate(reports):
        want = claims_json(claims_of(r))
        assert texts.get(i, r) == want  # a miss (0, 1) decodes the report again
        assert texts.take(i, r) == want
        assert i not in texts._texts
    assert verified_body(
        "0011223344556677", "f", "rpi4", 1, 0, 1.0, False, texts.get(0, reports[0]), reports[0], None
    ) == verified_body("0011223344556677", "f", "rpi4", 1, 0, 1.0, False, claims_of(reports[0]), reports[0], None)
