"""Ed25519 (RFC 8032 §5.1) in portable Python for MicroPython and CPython.

Only what a device needs: derive the public key and sign.  ``verify`` is
here for callers, but its code lives in firmware_shim.ed25519_verify, which
a device never loads.
"""

from firmware_shim import sha512

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

# const(): MicroPython puts the numbers straight into the bytecode, so they
# cost no global names (every name is an interned string for good on a board).
_P = const(2 ** 255 - 19)
_L = const(2 ** 252 + 27742317777372353535851937790883648493)
# 2d, d = -121665/121666 mod p: the addition formula uses 2d only.
_D2 = const(16295367250680780974490674513165176452449235426866156013048779062215315747161)

# Base point in extended coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, xy = T/Z:
# y = 4/5 mod p, x its even root, T = x*y (RFC 8032 §5.1).
_B = (15112221349535400772501151409588531511454012693041857206046113283949847762202,
      46316835694926478169428394003475163141307993866256225615783033603165251855960, 1,
      46827403850823179245072216630277197565144205554125654976674165829533817101731)
_ZERO = const((0, 1, 1, 0))  # the neutral point; a tuple const() needs MicroPython 1.19+


class Ed25519Error(ValueError):
    """Wrong key or signature length; bad signatures return False instead."""


# Written for a small heap.  A number reduced mod p keeps the digit buffer of
# the product it came from (~100 bytes where 32 would do on the 64-bit unix
# port), so: names are reused as soon as a value is dead, letting the
# collector take it while the next product is made, and each coordinate of a
# result is shifted by 0, which copies it into an exactly sized number.  A
# point that lives across the loop of _mul then takes 320 bytes instead of
# 576, and signing needs ~1.5 KB less free heap.  (On CPython `>> 0` is a
# no-op.)

def _add(p, q):
    # Unified addition for twisted Edwards curves with a = -1 (RFC 8032 §5.1.4).
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    e = b - a
    h = b + a
    # C of RFC 8032, reduced after each product: a three-way product is a
    # 765-bit number, the largest block signing would allocate.
    a = t1 * _D2 % _P * t2 % _P
    b = 2 * z1 * z2 % _P  # D
    f = b - a
    g = b + a
    a = b = None
    return ((e * f % _P) >> 0, (g * h % _P) >> 0, (f * g % _P) >> 0, (e * h % _P) >> 0)


def _double(p):
    x1, y1, z1, _ = p
    a = x1 * x1 % _P
    b = y1 * y1 % _P
    h = a + b
    g = a - b
    a = b = None
    e = (h - (x1 + y1) * (x1 + y1)) % _P
    f = 2 * z1 * z1 % _P + g
    return ((e * f % _P) >> 0, (g * h % _P) >> 0, (f * g % _P) >> 0, (e * h % _P) >> 0)


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


def _expand(secret):
    if len(secret) != 32:
        raise Ed25519Error("secret key must be 32 bytes, got %d" % len(secret))
    h = sha512.digest((secret,))
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return a, h[32:]


def public_key(secret):
    """The 32-byte public key for a 32-byte secret seed."""
    a, _ = _expand(secret)
    return _encode(_mul(a, _B))


def sign(secret, msg, public=None):
    """64-byte signature of ``msg``; pass ``public`` to skip re-deriving it.

    ``msg`` is bytes, or a tuple of byte strings signed as their
    concatenation: a caller that builds the message from pieces (the COSE
    Sig_structure around a payload) need not join them, which on a board
    is one more block of a few hundred bytes at the peak of signing."""
    parts = msg if isinstance(msg, tuple) else (msg,)
    a, prefix = _expand(secret)
    if public is None:
        public = _encode(_mul(a, _B))
    r = int.from_bytes(sha512.digest((prefix,) + parts), "little") % _L
    big_r = _encode(_mul(r, _B))
    k = int.from_bytes(sha512.digest((big_r, public) + parts), "little") % _L
    s = (r + k * a) % _L
    return big_r + s.to_bytes(32, "little")


def verify(public, msg, sig):
    """True when ``sig`` is a valid signature of ``msg`` under ``public``."""
    # A device only signs, so point decoding and verification live in their
    # own module and take no RAM on a board until something verifies.
    from firmware_shim import ed25519_verify
    return ed25519_verify.verify(public, msg, sig)
