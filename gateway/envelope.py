"""Gateway-side COSE_Sign1 parsing and verification: cbor2 + PyNaCl (libsodium).

The same rules as the portable ``firmware_shim.cose`` (and the same reason
codes), at C speed, plus the stricter form docs/protocol.md requires of Surge
messages: tag 18, protected header exactly {1: -8, 4: kid}, empty unprotected
header, and the whole message and its claims in deterministic encoding
(RFC 8949 §4.2.1; the claims are checked by re-encoding them and comparing
bytes).  That rejects duplicate keys and every alternative encoding of the
same signed content; the signature itself is always checked over the bytes
as received.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from nacl.exceptions import BadSignatureError
from nacl.bindings import crypto_sign_open

from firmware_shim import cbor as portable_cbor
from firmware_shim.cose import COSE_SIGN1_TAG, EDDSA, KID, COSEError

_SIG1_CONTEXT = b"\x8aSignature1"  # text string "Signature1" (0x6a + 10 bytes)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A structurally valid COSE_Sign1 whose signature has not been checked yet."""

    protected: bytes
    kid: bytes
    payload: bytes
    signature: bytes
    claims: Mapping[Any, Any]

    def to_be_signed(self) -> bytes:
        # Sig_structure = ["Signature1", protected, h'', payload] (RFC 9052 §4.4),
        # assembled around the received bytes rather than re-encoding them.
        return b"".join(
            (
                b"\x84\x6aSignature1",
                _bstr_head(len(self.protected)),
                self.protected,
                b"\x40",
                _bstr_head(len(self.payload)),
                self.payload,
            )
        )


def _bstr_head(n: int) -> bytes:
    if n < 24:
        return bytes((0x40 | n,))
    if n < 0x100:
        return bytes((0x58, n))
    if n < 0x10000:
        return b"\x59" + n.to_bytes(2, "big")
    return b"\x5a" + n.to_bytes(4, "big")


def _loads(data: bytes, what: str) -> Any:
    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types, RecursionError included
        raise COSEError("malformed_cbor", "%s: %s" % (what, exc)) from None


# The one valid form of a Surge message (docs/protocol.md §4.1), as bytes:
# tag 18, array of 4, 13-byte protected header {1: -8, 4: kid}, empty map,
# payload, 64-byte signature.
_FIXED_HEAD = b"\xd2\x84\x4d\xa2\x01\x27\x04\x48"
_SIG_HEAD = b"\x58\x40"


def payload_at(data: bytes) -> bytes | None:
    """The payload of a message in the one valid form, found by position; None otherwise.

    Performance (docs/performance.md): no decoding of the envelope and its
    header. Used on every received report, and for reports read back from
    the store (gateway/republish.py).
    """
    n = len(data)
    if n < 84 or data[:8] != _FIXED_HEAD or data[16] != 0xA0 or data[n - 66 : n - 64] != _SIG_HEAD:
        return None
    head = data[17]
    start = length = -1  # no match unless the payload head is in its shortest form
    if 0x40 <= head < 0x58:
        start, length = 18, head - 0x40
    elif head == 0x58 and data[18] >= 24:
        start, length = 19, data[18]
    elif head == 0x59 and data[18]:
        start, length = 20, int.from_bytes(data[18:20], "big")
    return data[start : n - 66] if start >= 0 and start + length == n - 66 else None


def parse(data: bytes) -> Envelope:
    """Check structure and decode claims; raises ``COSEError`` with a reason code."""
    payload = payload_at(data)
    if payload is not None:
        return Envelope(data[3:16], data[8:16], payload, data[-64:], decode_claims(payload))
    # Anything else takes the full path, which picks the rejection reason.
    return _parse_decoded(data)


def _parse_decoded(data: bytes) -> Envelope:
    obj = obj_tagged = _loads(data, "envelope")
    if isinstance(obj, cbor2.CBORTag):
        if obj.tag != COSE_SIGN1_TAG:
            raise COSEError("not_cose_sign1", "tag %d, expected 18 (COSE_Sign1)" % obj.tag)
        obj = obj.value
    # cbor2 6 decodes the contents of a tag as immutable types (tuple,
    # frozendict); cbor2 5 as list and dict. Accept both.
    if not isinstance(obj, (list, tuple)) or len(obj) != 4:
        raise COSEError("not_cose_sign1", "expected an array of 4 items")
    protected, unprotected, payload, signature = obj
    if not isinstance(protected, bytes):
        raise COSEError("bad_header", "protected header is not a byte string")
    if not isinstance(unprotected, Mapping):
        raise COSEError("bad_header", "unprotected header is not a map")
    if not isinstance(payload, bytes):
        raise COSEError("bad_payload", "payload is not a byte string (detached payloads are not used)")
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise COSEError("bad_signature", "signature is not 64 bytes")
    header = _loads(protected, "protected header") if protected else {}
    if not isinstance(header, Mapping):
        raise COSEError("bad_header", "protected header is not a map")
    if header.get(1) != EDDSA:
        raise COSEError("unsupported_alg", "alg %r, expected -8 (EdDSA)" % (header.get(1),))
    if 1 in unprotected:
        raise COSEError("bad_header", "alg must be in the protected header only")
    if 2 in header:
        raise COSEError("bad_header", "critical header parameters are not supported")
    kid = header.get(KID)
    if not isinstance(kid, bytes) or len(kid) != 8:
        raise COSEError("bad_header", "protected header must carry an 8-byte kid")
    # Exactly one encoding of a report is valid, so nobody can turn one signed
    # report into different leaf bytes (untagged, extra unprotected headers,
    # reordered or longer-than-needed encodings).
    if protected != b"\xa2\x01\x27\x04\x48" + kid:
        raise COSEError("bad_header", "protected header is not exactly {1: -8, 4: kid}")
    if unprotected:
        raise COSEError("bad_header", "unprotected header must be empty")
    if not isinstance(obj_tagged, cbor2.CBORTag):
        raise COSEError("not_cose_sign1", "COSE_Sign1 tag 18 is missing")
    if data != b"".join(
        (
            b"\xd2\x84",
            _bstr_head(len(protected)),
            protected,
            b"\xa0",
            _bstr_head(len(payload)),
            payload,
            b"\x58\x40",
            signature,
        )
    ):
        raise COSEError("not_deterministic", "envelope is not in deterministic encoding")
    claims = decode_claims(payload)
    return Envelope(protected, kid, payload, signature, claims)


def decode_claims(payload: bytes) -> Mapping[Any, Any]:
    """The claims map, provided the payload is deterministic CBOR of the protocol subset."""
    claims = _loads(payload, "claims")
    if not isinstance(claims, Mapping):
        raise COSEError("bad_payload", "claims are not a map")
    if _fast_deterministic(claims, payload):
        return claims
    # Slow path, authoritative for every rejection and its reason code: the
    # portable encoder (pure Python, ~20 us per report) re-encodes the claims.
    try:
        canonical = portable_cbor.dumps(_from_cbor2(claims))
    except (portable_cbor.CBORError, TypeError) as exc:
        raise COSEError("bad_payload", "claims outside the protocol subset: %s" % exc) from None
    if canonical != payload:
        raise COSEError("not_deterministic", "claims are not in deterministic encoding (RFC 8949 §4.2.1)")
    return claims


# Performance (per-message path, docs/performance.md): a well-formed report is
# accepted without the pure-Python re-encode.  cbor2's *non-canonical* dumps
# writes map keys in insertion order, i.e. in the order they arrived, and
# always uses shortest heads and definite lengths; so when every value is of
# the protocol subset (no floats, no tags, integers within 64 bits, scalar
# keys), every map's keys arrive strictly increasing bytewise by their
# encodings, and cbor2's encoding equals the payload, then the payload *is*
# the RFC 8949 §4.2.1 encoding and the slow check would accept it too.  Any
# other payload falls through to the slow check, which decides the reason.
# Keep _plain no wider than _from_cbor2: tests/test_gateway_envelope_fast.py
# compares both paths on generated payloads.
_FAST_MAX_DEPTH = portable_cbor.MAX_DEPTH - 2  # deeper: let the slow path decide
_INT_MIN, _INT_MAX = -(2**64), 2**64 - 1
_KEY_ENCODINGS: dict[tuple[type, Any], bytes] = {}  # (type, key) -> encoding; claim keys are few


def _key_encoding(k: Any) -> bytes | None:
    t = type(k)
    if t is not int and t is not str:  # the key types _from_cbor2 allows (bool is not int here)
        return None
    if t is int and not _INT_MIN <= k <= _INT_MAX:
        return None
    hit = _KEY_ENCODINGS.get((t, k))
    if hit is None:
        hit = cbor2.dumps(k)
        if len(_KEY_ENCODINGS) < 4096:  # bounded: keys come from untrusted input
            _KEY_ENCODINGS[(t, k)] = hit
    return hit


def _plain(v: Any, depth: int) -> bool:
    """``v`` is within the protocol subset and every map in it is in bytewise key order."""
    t = type(v)
    if t is int:
        return bool(_INT_MIN <= v <= _INT_MAX)
    if t is bytes or t is str or t is bool:  # the scalar types _from_cbor2 allows (no null)
        return True
    if depth >= _FAST_MAX_DEPTH:
        return False
    if t is dict:
        last = b""
        for k, x in v.items():
            enc = _KEY_ENCODINGS.get((type(k), k))
            if enc is None:
                enc = _key_encoding(k)
            if enc is None or enc <= last:
                return False
            last = enc
            # Scalars inline: this runs for every claim of every report.
            tx = type(x)
            if tx is int:
                if not _INT_MIN <= x <= _INT_MAX:
                    return False
            elif tx is not bytes and tx is not str and tx is not bool and not _plain(x, depth + 1):
                return False
        return True
    if t is list:
        return all(_plain(x, depth + 1) for x in v)
    return False  # floats, tags, sets, datetimes, undefined, ... : slow path


def _fast_deterministic(claims: Mapping[Any, Any], payload: bytes) -> bool:
    try:
        return _plain(claims, 0) and cbor2.dumps(claims) == payload
    except Exception:  # anything unexpected: the slow path decides
        return False


def _from_cbor2(v: Any) -> Any:
    if isinstance(v, cbor2.CBORTag):
        raise TypeError("tag %d: the claims use no tags" % v.tag)
    if isinstance(v, Mapping):
        for k in v:
            # Map keys only integers or text (protocol §4.4). cbor2 turns array keys
            # into tuples, and a bool key would alias 1 or 0 (True == 1 in Python).
            if not isinstance(k, (int, str)) or isinstance(k, bool):
                raise TypeError("map key of type %s" % type(k).__name__)
        return {k: _from_cbor2(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_from_cbor2(x) for x in v]
    if isinstance(v, (int, bytes, str, bool)):  # no null or undefined (§4.4)
        return v
    raise TypeError("unsupported %s" % type(v).__name__)


def verify(env: Envelope, public: bytes) -> bool:
    """True when the signature is valid for ``public`` (32 bytes)."""
    if len(public) != 32:  # libsodium reads 32 bytes whatever it is given
        raise ValueError("an Ed25519 public key is 32 bytes, not %d" % len(public))
    try:
        crypto_sign_open(env.signature + env.to_be_signed(), public)
    except BadSignatureError:
        return False
    return True
