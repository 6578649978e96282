"""The envelope's fast determinism check decides exactly like the portable re-encode.

gateway/envelope.py accepts a payload without the pure-Python re-encode when
cbor2 reproduces it byte for byte from maps in bytewise key order; anything
else goes to the slow path, which alone picks the rejection reason.  Here
both paths see the same payloads (deterministic ones, and cbor2 encodings in
arbitrary key order, length-first order, with floats, tags and big integers)
and must return the same claims or raise the same reason.
"""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_shim import cbor as portable_cbor
from firmware_shim.cose import COSEError
from gateway import envelope

scalars = st.one_of(
    st.integers(min_value=-(2**64) - 5, max_value=2**64 + 5),
    st.booleans(),
    st.none(),
    st.binary(max_size=20),
    st.text(max_size=10),
    st.floats(allow_nan=False, width=32),
)
keys = st.one_of(st.integers(min_value=-70000, max_value=70000), st.text(max_size=4), st.binary(max_size=3))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=25,
)
claims_maps = st.dictionaries(keys, values, min_size=1, max_size=8)


def decide(payload: bytes, fast: bool) -> Any:
    with pytest.MonkeyPatch.context() as m:
        if not fast:
            m.setattr(envelope, "_fast_deterministic", lambda claims, payload: False)
        try:
            return ("ok", envelope.decode_claims(payload))
        except COSEError as exc:
            return ("rejected", exc.reason)


@settings(max_examples=400, deadline=None)
@given(claims=claims_maps, how=st.sampled_from(["portable", "cbor2", "cbor2-canonical", "reversed"]))
def test_fast_path_agrees_with_portable_reencode(claims: dict[Any, Any], how: str) -> None:
    try:
        if how == "portable":
            payload = portable_cbor.dumps(claims)
        elif how == "cbor2":
            payload = cbor2.dumps(claims)
        elif how == "cbor2-canonical":
            payload = cbor2.dumps(claims, canonical=True)  # length-first key order (RFC 8949 §4.2.3)
        else:
            payload = cbor2.dumps(dict(reversed(list(claims.items()))))
    except (portable_cbor.CBORError, TypeError, ValueError):
        return  # not encodable this way (floats, big integers in the portable encoder)
    assert decide(payload, True) == decide(payload, False)


def test_fast_path_takes_a_typical_report() -> None:
    # -1 sorts after 256 bytewise (0x20 > 0x19) but before it length-first.
    claims = {
        6: 1795000000,
        256: b"\x01" * 9,
        261: 259200,
        267: 12,
        -1: 0,
        -65537: {1: 123456, 2: 31914983424, 3: 12345678901, 10: 300, 11: b"\x00" * 16, 12: True, 13: 0},
    }
    payload = portable_cbor.dumps(claims)
    assert envelope._fast_deterministic(cbor2.loads(payload), payload)
    assert decide(payload, True) == ("ok", claims)
    # length-first order of the same claims is not the deterministic encoding
    bad = cbor2.dumps(claims, canonical=True)
    assert bad != payload
    assert not envelope._fast_deterministic(cbor2.loads(bad), bad)
    assert decide(bad, True) == ("rejected", "not_deterministic")


def parse_outcome(data: bytes, by_bytes: bool) -> Any:
    try:
        env = envelope.parse(data) if by_bytes else envelope._parse_decoded(data)
    except COSEError as exc:
        return ("rejected", exc.reason)
    return ("ok", env.protected, env.kid, env.payload, env.signature, dict(env.claims))


def _envelope(payload: bytes, kid: bytes = b"\x07" * 8) -> bytes:
    protected = b"\xa2\x01\x27\x04\x48" + kid
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, b"\x5a" * 64]))


@settings(max_examples=400, deadline=None)
@given(
    pad=st.integers(min_value=0, max_value=600),
    cut=st.integers(min_value=0, max_value=700),
    flip=st.tuples(st.integers(min_value=0, max_value=700), st.integers(min_value=1, max_value=255)),
    how=st.sampled_from(["as is", "flip", "truncate", "append", "long head"]),
)
def test_envelope_recognised_by_bytes_exactly_when_decoding_accepts_it(
    pad: int, cut: int, flip: tuple[int, int], how: str
) -> None:
    # Payloads under 24, under 256 and above (three head forms), then one change.
    data = _envelope(portable_cbor.dumps({261: 1, 270: "x" * pad} if pad else {261: 1}))
    if how == "flip":
        i = flip[0] % len(data)
        data = data[:i] + bytes((data[i] ^ flip[1],)) + data[i + 1 :]
    elif how == "truncate":
        data = data[: cut % len(data)]
    elif how == "append":
        data = data + b"\x00"
    elif how == "long head":  # the payload's length in a longer head than needed
        payload = portable_cbor.dumps({261: 1, 270: "x" * pad} if pad else {261: 1})
        longer = (
            b"\x59" + len(payload).to_bytes(2, "big")
            if len(payload) < 256
            else b"\x5a" + len(payload).to_bytes(4, "big")
        )
        data = (
            b"\xd2\x84\x4d\xa2\x01\x27\x04\x48" + b"\x07" * 8 + b"\xa0" + longer + payload + b"\x58\x40" + b"\x5a" * 64
        )
    outcome = parse_outcome(data, True)
    assert outcome == parse_outcome(data, False)
    if how == "as is":
        assert outcome[0] == "ok"
    if how == "long head":
        assert outcome == ("rejected", "not_deterministic")
