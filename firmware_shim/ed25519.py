"""Ed25519 (RFC 8032 §5.1) in portable Python for MicroPython and CPython.

Only what a device needs: derive the public key, sign, verify.  Verification
follows RFC 8032 §5.1.7 in its cofactorless form (the one libsodium uses):
S must be canonical (S < L), A must decode, and the encoding of [S]B - [k]A
must equal R byte for byte, which also rejects non-canonical R.
"""

from firmware_shim import sha512 as _sha512

_P = 2 ** 255 - 19
_L = 2 ** 252 + 27742317777372353535851937790883648493
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_D2 = (2 * _D) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)

# Base point in extended coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, xy = T/Z.
_BY = (4 * pow(5, _P - 2, _P)) % _P
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_B = (_BX, _BY, 1, (_BX * _BY) % _P)
_ZERO = (0, 1, 1, 0)


class Ed25519Error(ValueError):
    """Wrong key or signature length; bad signatures return False instead."""


def _add(p, q):
    # Unified addition for twisted Edwards curves with a = -1 (RFC 8032 §5.1.4).
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = t1 * _D2 * t2 % _P
    d = 2 * z1 * z2 % _P
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _double(p):
    x1, y1, z1, _ = p
    a = x1 * x1 % _P
    b = y1 * y1 % _P
    c = 2 * z1 * z1 % _P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1)
    g = a - b
    f = c + g
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(s, p):
    q = _ZERO
    while s:
        if s & 1:
            q = _add(q, p)
        p = _double(p)
        s >>= 1
    return q


def _encode(p):
    x, y, z, _ = p
    zi = pow(z, _P - 2, _P)
    x = x * zi % _P
    y = y * zi % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


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


def _h(*parts):
    h = _sha512.new()
    for part in parts:
        h.update(part)
    return h.digest()


def _expand(secret):
    if len(secret) != 32:
        raise Ed25519Error("secret key must be 32 bytes, got %d" % len(secret))
    h = _h(secret)
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return a, h[32:]


def public_key(secret):
    """The 32-byte public key for a 32-byte secret seed."""
    a, _ = _expand(secret)
    return _encode(_mul(a, _B))


def sign(secret, msg, public=None):
    """64-byte signature of ``msg``; pass ``public`` to skip re-deriving it."""
    a, prefix = _expand(secret)
    if public is None:
        public = _encode(_mul(a, _B))
    r = int.from_bytes(_h(prefix, msg), "little") % _L
    big_r = _encode(_mul(r, _B))
    k = int.from_bytes(_h(big_r, public, msg), "little") % _L
    s = (r + k * a) % _L
    return big_r + s.to_bytes(32, "little")


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
    k = int.from_bytes(_h(sig[:32], public, msg), "little") % _L
    neg_a = ((_P - a[0]) % _P, a[1], a[2], (_P - a[3]) % _P)
    return _encode(_add(_mul(s, _B), _mul(k, neg_a))) == bytes(sig[:32])
