"""SHA-512 (FIPS 180-4) in portable Python, for runtimes whose hashlib lacks it.

MicroPython firmware usually ships sha1/sha256 only; Ed25519 needs SHA-512.
``new()`` returns the runtime's own implementation when there is one, so the
pure-Python rounds below only run where nothing faster exists.
"""

_M = 0xFFFFFFFFFFFFFFFF

# First 64 bits of the fractional parts of the cube roots of the first 80 primes.
_K = (
    0x428A2F98D728AE22, 0x7137449123EF65CD, 0xB5C0FBCFEC4D3B2F, 0xE9B5DBA58189DBBC,
    0x3956C25BF348B538, 0x59F111F1B605D019, 0x923F82A4AF194F9B, 0xAB1C5ED5DA6D8118,
    0xD807AA98A3030242, 0x12835B0145706FBE, 0x243185BE4EE4B28C, 0x550C7DC3D5FFB4E2,
    0x72BE5D74F27B896F, 0x80DEB1FE3B1696B1, 0x9BDC06A725C71235, 0xC19BF174CF692694,
    0xE49B69C19EF14AD2, 0xEFBE4786384F25E3, 0x0FC19DC68B8CD5B5, 0x240CA1CC77AC9C65,
    0x2DE92C6F592B0275, 0x4A7484AA6EA6E483, 0x5CB0A9DCBD41FBD4, 0x76F988DA831153B5,
    0x983E5152EE66DFAB, 0xA831C66D2DB43210, 0xB00327C898FB213F, 0xBF597FC7BEEF0EE4,
    0xC6E00BF33DA88FC2, 0xD5A79147930AA725, 0x06CA6351E003826F, 0x142929670A0E6E70,
    0x27B70A8546D22FFC, 0x2E1B21385C26C926, 0x4D2C6DFC5AC42AED, 0x53380D139D95B3DF,
    0x650A73548BAF63DE, 0x766A0ABB3C77B2A8, 0x81C2C92E47EDAEE6, 0x92722C851482353B,
    0xA2BFE8A14CF10364, 0xA81A664BBC423001, 0xC24B8B70D0F89791, 0xC76C51A30654BE30,
    0xD192E819D6EF5218, 0xD69906245565A910, 0xF40E35855771202A, 0x106AA07032BBD1B8,
    0x19A4C116B8D2D0C8, 0x1E376C085141AB53, 0x2748774CDF8EEB99, 0x34B0BCB5E19B48A8,
    0x391C0CB3C5C95A63, 0x4ED8AA4AE3418ACB, 0x5B9CCA4F7763E373, 0x682E6FF3D6B2B8A3,
    0x748F82EE5DEFB2FC, 0x78A5636F43172F60, 0x84C87814A1F0AB72, 0x8CC702081A6439EC,
    0x90BEFFFA23631E28, 0xA4506CEBDE82BDE9, 0xBEF9A3F7B2C67915, 0xC67178F2E372532B,
    0xCA273ECEEA26619C, 0xD186B8C721C0C207, 0xEADA7DD6CDE0EB1E, 0xF57D4F7FEE6ED178,
    0x06F067AA72176FBA, 0x0A637DC5A2C898A6, 0x113F9804BEF90DAE, 0x1B710B35131C471B,
    0x28DB77F523047D84, 0x32CAAB7B40C72493, 0x3C9EBE0A15C9BEBC, 0x431D67C49C100D4C,
    0x4CC5D4BECB3E42B6, 0x597F299CFC657E2A, 0x5FCB6FAB3AD6FAEC, 0x6C44198C4A475817,
)

_IV = (
    0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1,
    0x510E527FADE682D1, 0x9B05688C2B3E6C1F, 0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179,
)


def _ror(x, n):
    return ((x >> n) | (x << (64 - n))) & _M


def _compress(h, block):
    w = [int.from_bytes(block[i:i + 8], "big") for i in range(0, 128, 8)]
    for t in range(16, 80):
        a = w[t - 15]
        b = w[t - 2]
        s0 = _ror(a, 1) ^ _ror(a, 8) ^ (a >> 7)
        s1 = _ror(b, 19) ^ _ror(b, 61) ^ (b >> 6)
        w.append((w[t - 16] + s0 + w[t - 7] + s1) & _M)
    a, b, c, d, e, f, g, hh = h
    for t in range(80):
        t1 = (hh + (_ror(e, 14) ^ _ror(e, 18) ^ _ror(e, 41))
              + ((e & f) ^ (~e & g)) + _K[t] + w[t]) & _M
        t2 = ((_ror(a, 28) ^ _ror(a, 34) ^ _ror(a, 39))
              + ((a & b) ^ (a & c) ^ (b & c))) & _M
        hh = g
        g = f
        f = e
        e = (d + t1) & _M
        d = c
        c = b
        b = a
        a = (t1 + t2) & _M
    return [(x + y) & _M for x, y in zip(h, (a, b, c, d, e, f, g, hh))]


class SHA512:
    """hashlib-style object: ``update(data)``, ``digest()``, ``hexdigest()``."""

    digest_size = 64
    block_size = 128
    name = "sha512"

    def __init__(self, data=b""):
        self._h = list(_IV)
        self._buf = b""
        self._len = 0
        if data:
            self.update(data)

    def update(self, data):
        data = bytes(data)
        self._len += len(data)
        buf = self._buf + data
        end = len(buf) - len(buf) % 128
        for i in range(0, end, 128):
            self._h = _compress(self._h, buf[i:i + 128])
        self._buf = buf[end:]

    def copy(self):
        other = SHA512()
        other._h = list(self._h)
        other._buf = self._buf
        other._len = self._len
        return other

    def digest(self):
        bitlen = self._len * 8
        pad = b"\x80" + b"\x00" * ((111 - self._len) % 128) + bitlen.to_bytes(16, "big")
        h = self._h
        tail = self._buf + pad
        for i in range(0, len(tail), 128):
            h = _compress(h, tail[i:i + 128])
        return b"".join(x.to_bytes(8, "big") for x in h)

    def hexdigest(self):
        return "".join("%02x" % b for b in self.digest())


def _native():
    try:
        import hashlib
        hashlib.sha512(b"")
        return hashlib.sha512
    except (ImportError, AttributeError):
        return None


_NATIVE = _native()


def new(data=b""):
    """A SHA-512 object from the runtime when it has one, else the portable one."""
    if _NATIVE is not None:
        return _NATIVE(data)
    return SHA512(data)


def sha512(data=b""):
    return new(data)
