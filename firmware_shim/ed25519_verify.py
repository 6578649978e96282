"""Ed25519 verification (RFC 8032 §5.1.7), split from firmware_shim.ed25519.

Verification follows the cofactorless form (the one libsodium uses): S must
be canonical (S < L), A must decode, and the encoding of [S]B - [k]A must
equal R byte for byte, which also rejects non-canonical R.  A device never
verifies, so this part is loaded only where something does (hosts, tests).
"""

from firmware_shim import sha512
from firmware_shim.ed25519 import _B, Ed25519Error, _add, _encode, _mul

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

# Repeated from firmware_shim.ed25519: const() names are not module attributes
# on MicroPython, so they cannot be imported from there.
_P = const(2 ** 255 - 19)
_L = const(2 ** 252 + 27742317777372353535851937790883648493)
_D = const(37095705934669439343138083508754565189542113879843219016388785533085940283555)
_SQRT_M1 = const(19681161376707505956807079304988542015446066515923890162744021073123829784752)


def _decode(s):
    """Point from its 32-byte encoding, or None when it is not on the curve."""
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= _P:
        return None
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    # x = (u/v)^((p+3)/8), computed with one exponentiation (RFC 8032 §5.1.3).
    v3 = v * v * v % _P
    x = u * v3 * pow(u * v3 * v3 * v % _P, (_P - 5) // 8, _P) % _P
    vx2 = v * x * x % _P
    if vx2 != u:
        if vx2 != (-u) % _P:
            return None
        x = x * _SQRT_M1 % _P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return (x, y, 1, x * y % _P)


def verify(public, msg, sig):
    """True when ``sig`` is a valid signature of ``msg`` under ``public``."""
    if len(public) != 32:
        raise Ed25519Error("public key must be 32 bytes, got %d" % len(public))
    if len(sig) != 64:
        raise Ed25519Error("signature must be 64 bytes, got %d" % len(sig))
    s = int.from_bytes(sig[32:], "little")
    if s >= _L:
        return False
    a = _decode(public)
    if a is None:
        return False
    k = int.from_bytes(sha512.digest((sig[:32], public, msg)), "little") % _L
    neg_a = ((_P - a[0]) % _P, a[1], a[2], (_P - a[3]) % _P)
    return _encode(_add(_mul(s, _B), _mul(k, neg_a))) == bytes(sig[:32])
