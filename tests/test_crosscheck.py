"""Property tests: the portable core against the reference libraries.

PyNaCl (libsodium) for Ed25519, cbor2 for CBOR, python-cwt as an independent
COSE implementation, and the gateway's cbor2 + PyNaCl fast path.
"""

from __future__ import annotations

import json
from typing import Any

import cbor2
import nacl.signing
import pytest
from cwt import COSE, COSEKey
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import VECTORS
from firmware_shim import cbor, cose, ed25519
from firmware_shim.cose import COSEError
from gateway import envelope

secrets = st.binary(min_size=32, max_size=32)
messages = st.binary(max_size=300)


@settings(max_examples=60, deadline=None)
@given(secrets, messages)
def test_ed25519_matches_libsodium(sk: bytes, msg: bytes) -> None:
    ref = nacl.signing.SigningKey(sk)
    pk = bytes(ref.verify_key)
    assert ed25519.public_key(sk) == pk
    sig = ed25519.sign(sk, msg)
    assert sig == ref.sign(msg).signature
    assert ed25519.verify(pk, msg, sig)


@settings(max_examples=60, deadline=None)
@given(secrets, messages, st.integers(0, 63), st.integers(0, 7))
def test_ed25519_rejects_what_libsodium_rejects(sk: bytes, msg: bytes, byte: int, bit: int) -> None:
    ref = nacl.signing.SigningKey(sk)
    pk = bytes(ref.verify_key)
    sig = bytearray(ref.sign(msg).signature)
    sig[byte] ^= 1 << bit
    try:
        ref.verify_key.verify(msg, bytes(sig))
        expected = True
    except nacl.exceptions.BadSignatureError:
        expected = False
    assert ed25519.verify(pk, msg, bytes(sig)) is expected


# Values inside the protocol subset; text/bytes/int keys as in real claims.
scalars = st.integers(-(2**64), 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=20) | st.booleans() | st.none()
keys = st.integers(-(2**64), 2**64 - 1) | st.text(max_size=10) | st.binary(max_size=10)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=20,
)


def _sort_bytewise(obj: Any) -> Any:
    """A cbor2 encoding with map keys in RFC 8949 §4.2.1 (bytewise) order."""
    if isinstance(obj, dict):
        items = sorted(((cbor2.dumps(k), _sort_bytewise(v)) for k, v in obj.items()), key=lambda kv: kv[0])
        head = cbor2.dumps({i: None for i in range(len(items))})[: -2 * len(items) or None]
        return head + b"".join(k + v for k, v in items)
    if isinstance(obj, list):
        return cbor2.dumps([None] * len(obj))[: -len(obj) or None] + b"".join(_sort_bytewise(x) for x in obj)
    return cbor2.dumps(obj)


@settings(max_examples=300, deadline=None)
@given(values)
def test_cbor_encode_matches_cbor2(value: Any) -> None:
    ours = cbor.dumps(value)
    # cbor2's canonical=True sorts length-first (§4.2.3); build the §4.2.1 order by hand.
    assert ours == _sort_bytewise(value)
    assert cbor2.loads(ours) == value
    assert cbor.loads(ours) == value


@settings(max_examples=300, deadline=None)
@given(values)
def test_cbor_decodes_cbor2_output(value: Any) -> None:
    data = cbor2.dumps(value)
    assert cbor.loads(data) == value


def test_bytewise_order_differs_from_cbor2_canonical() -> None:
    claims = {-1: 0, 6: 0, 256: 0}
    # Bytewise: 06 < 19 01 00 < 20.  Length-first (cbor2 canonical): 06, 20, 19 01 00.
    assert cbor.dumps(claims).hex() == "a3" + "0600" + "19010000" + "2000"
    assert cbor2.dumps(claims, canonical=True).hex() == "a3" + "0600" + "2000" + "19010000"


def _cwt_key(pk: bytes, kid: bytes, sk: bytes | None = None) -> Any:
    # python-cwt picks the key by kid, so the key carries it too.
    params: dict[int, Any] = {1: 1, 2: kid, -1: 6, -2: pk, 3: -8}
    if sk is not None:
        params[-4] = sk
    return COSEKey.new(params)


@settings(max_examples=30, deadline=None)
@given(secrets, st.binary(max_size=200), st.binary(min_size=1, max_size=16))
def test_cose_interop_with_python_cwt(sk: bytes, payload: bytes, kid: bytes) -> None:
    pk = ed25519.public_key(sk)
    ours = cose.sign1(payload, sk, kid)
    assert COSE.new().decode(ours, _cwt_key(pk, kid)) == payload
    theirs = COSE.new().encode_and_sign(payload, _cwt_key(pk, kid, sk), protected={1: -8, 4: kid})
    assert cose.verify_sign1(theirs, pk)
    assert cose.parse_sign1(theirs).payload == payload


def _reference() -> tuple[bytes, bytes]:
    doc = json.loads((VECTORS / "cose_sign1.json").read_text())["reference_report"]
    return bytes.fromhex(doc["cbor"]), bytes.fromhex(doc["public"])


def test_reference_report_size() -> None:
    data, pk = _reference()
    print("reference report: %d bytes" % len(data))
    assert len(data) <= 200
    assert envelope.verify(envelope.parse(data), pk)


def _portable_outcome(data: bytes, pk: bytes) -> str:
    try:
        msg = cose.parse_sign1(data)
        cbor_claims = cbor.loads(msg.payload)
        if not isinstance(cbor_claims, dict):
            return "bad_payload"
        if cbor.dumps(cbor_claims) != msg.payload:
            return "not_deterministic"
        # The strict Surge form (docs/protocol.md §4): one valid encoding only.
        if cbor.dumps(cbor.Tag(18, [msg.protected, {}, msg.payload, msg.signature])) != data:
            return "not_deterministic"
        if not isinstance(msg.kid, bytes) or msg.protected != cbor.dumps({1: -8, 4: msg.kid}):
            return "bad_header"
    except COSEError as exc:
        return exc.reason
    except cbor.CBORError:
        return "bad_payload"
    return "valid" if cose.verify_sign1(msg, pk) else "invalid"


def _fast_outcome(data: bytes, pk: bytes) -> str:
    try:
        env = envelope.parse(data)
    except COSEError as exc:
        return exc.reason
    return "valid" if envelope.verify(env, pk) else "invalid"


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fast_path_agrees_with_portable_core(data: st.DataObject) -> None:
    report, pk = _reference()
    raw = bytearray(report)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    mutated = bytes(raw)
    fast = _fast_outcome(mutated, pk)
    portable = _portable_outcome(mutated, pk)
    # Accept/reject must agree exactly; the reason may differ only between
    # parse-level codes that both mean "malformed".
    assert (fast == "valid") == (portable == "valid"), (mutated.hex(), fast, portable)
    if mutated != report:
        assert fast != "valid"


@pytest.mark.parametrize(
    "case", json.loads((VECTORS / "cbor_malformed.json").read_text())["cases"], ids=lambda c: c["hex"][:20]
)
def test_fast_path_rejects_malformed_claims(case: dict[str, str]) -> None:
    payload = bytes.fromhex(case["hex"])
    protected = b"\xa2\x01\x27\x04\x48" + b"\x01" * 8
    msg = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, b"\x00" * 64]))
    with pytest.raises(COSEError):
        envelope.parse(msg)


@pytest.mark.parametrize(
    "mutate,reason,still_signed",
    [
        (lambda m: m[1:], "not_cose_sign1", True),  # untagged
        (lambda m: m.replace(b"\xa0", b"\xa1\x05\x40", 1), "bad_header", True),  # unprotected {5: h''}
        (lambda m: m[:2] + b"\x58\x0d" + m[3:], "not_deterministic", True),  # long length form
        (lambda m: m[:2] + b"\x4d\xa2\x04\x48" + m[8:16] + b"\x01\x27" + m[16:], "bad_header", False),  # reordered
    ],
)
def test_fast_path_accepts_one_encoding_only(mutate: Any, reason: str, still_signed: bool) -> None:
    data, pk = _reference()
    bad = mutate(data)
    with pytest.raises(COSEError) as err:
        envelope.parse(bad)
    assert err.value.reason == reason
    # Where the signature still verifies (the signed bytes are unchanged), only
    # the strict form stops a relay from minting a second leaf for one report.
    assert cose.verify_sign1(bad, pk) is still_signed
