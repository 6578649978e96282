"""COSE_Sign1 (RFC 9052 §4.2) with EdDSA, as Surge reports use it.

Wire form: tag 18 around [protected, unprotected, payload, signature], where
protected is the encoding of {1: -8, 4: kid} (alg EdDSA and the key id, both
covered by the signature, so no byte of a report can change without breaking
it) and unprotected is the empty map.  The signature covers Sig_structure (RFC 9052 §4.4):
["Signature1", protected, external_aad, payload].  Verification works on the
exact bytes received: the protected header and payload are hashed as they
arrived, never re-encoded.
"""

from firmware_shim import cbor
from firmware_shim import ed25519

COSE_SIGN1_TAG = 18
ALG = 1
KID = 4
CRIT = 2
EDDSA = -8
PROTECTED_EDDSA = b"\xa1\x01\x27"  # {1: -8}, when there is no kid


class COSEError(ValueError):
    """Not a COSE_Sign1 this protocol accepts; ``reason`` is a stable code."""

    def __init__(self, reason, detail):
        super().__init__("%s: %s" % (reason, detail))
        self.reason = reason
        self.detail = detail


class Sign1:
    """A parsed COSE_Sign1; ``protected`` and ``payload`` are the exact bytes."""

    def __init__(self, protected, header, unprotected, payload, signature):
        self.protected = protected
        self.header = header
        self.unprotected = unprotected
        self.payload = payload
        self.signature = signature

    @property
    def kid(self):
        kid = self.header.get(KID)
        if kid is None:
            kid = self.unprotected.get(KID)
        return kid

    def to_be_signed(self, external_aad=b""):
        return sig_structure(self.protected, self.payload, external_aad)


def sig_structure(protected, payload, external_aad=b""):
    return cbor.dumps(["Signature1", protected, external_aad, payload])


def sign1(payload, secret, kid, public=None):
    """Encode and sign ``payload`` (bytes) as a tagged COSE_Sign1.

    ``kid`` goes into the protected header; None leaves it out.
    """
    protected = PROTECTED_EDDSA if kid is None else cbor.dumps({ALG: EDDSA, KID: kid})
    sig = ed25519.sign(secret, sig_structure(protected, payload), public)
    return cbor.dumps(cbor.Tag(COSE_SIGN1_TAG, [protected, {}, payload, sig]))


def parse_sign1(data, max_depth=8):
    """Split a COSE_Sign1 into its parts, checking structure but not the signature."""
    try:
        obj = cbor.loads(data, max_depth)
    except cbor.CBORError as exc:
        raise COSEError("malformed_cbor", str(exc))
    if isinstance(obj, cbor.Tag):
        if obj.tag != COSE_SIGN1_TAG:
            raise COSEError("not_cose_sign1", "tag %d, expected 18 (COSE_Sign1)" % obj.tag)
        obj = obj.value
    if not isinstance(obj, list) or len(obj) != 4:
        raise COSEError("not_cose_sign1", "expected an array of 4 items")
    protected, unprotected, payload, signature = obj
    if not isinstance(protected, bytes):
        raise COSEError("bad_header", "protected header is not a byte string")
    if not isinstance(unprotected, dict):
        raise COSEError("bad_header", "unprotected header is not a map")
    if not isinstance(payload, bytes):
        raise COSEError("bad_payload", "payload is not a byte string (detached payloads are not used)")
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise COSEError("bad_signature", "signature is not 64 bytes")
    try:
        header = cbor.loads(protected, 2) if protected else {}
    except cbor.CBORError as exc:
        raise COSEError("bad_header", "protected header: %s" % exc)
    if not isinstance(header, dict):
        raise COSEError("bad_header", "protected header is not a map")
    _check_labels(header)
    _check_labels(unprotected)
    if header.get(ALG) != EDDSA:
        raise COSEError("unsupported_alg", "alg %r, expected -8 (EdDSA)" % (header.get(ALG),))
    if ALG in unprotected:
        raise COSEError("bad_header", "alg must be in the protected header only")
    if CRIT in header:
        raise COSEError("bad_header", "critical header parameters are not supported")
    return Sign1(protected, header, unprotected, payload, signature)


def _check_labels(header):
    # Header labels are integers or text (RFC 9052 §3.1). A bool label would
    # pass for 1 or 0 in a dict lookup (True == 1): {true: -8} is not alg EdDSA.
    for k in header:
        if not isinstance(k, (int, str)) or k is True or k is False:
            raise COSEError("bad_header", "header label %r is not an integer or text" % (k,))


def verify_sign1(msg, public, external_aad=b""):
    """True when the signature of a parsed or raw COSE_Sign1 is valid for ``public``."""
    if not isinstance(msg, Sign1):
        msg = parse_sign1(msg)
    return ed25519.verify(public, msg.to_be_signed(external_aad), msg.signature)
