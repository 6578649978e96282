"""Deterministic CBOR encoder for the device (portable, write-only).

The device only ever writes CBOR, and firmware_shim.cbor (decoder, error
types) costs ~8 KB of a 64 KB heap; this encoder is the same RFC 8949
§4.2.1 encoding (shortest heads, keys sorted bytewise by their encodings)
for the types reports use, in a fraction of that.  tests/test_agent_units.py
pins it to firmware_shim.cbor byte for byte on both runtimes.
"""


def _head(major, n):
    mt = major << 5
    if n < 24:
        return bytes((mt | n,))
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes((mt | extra,)) + n.to_bytes(size, "big")
    raise ValueError("integer does not fit in 64 bits")


def _enc(obj, out):
    # bool before int: True is an int on both runtimes.
    if obj is False or obj is True:
        out.append(b"\xf5" if obj else b"\xf4")
    elif obj is None:
        out.append(b"\xf6")
    elif isinstance(obj, int):
        out.append(_head(0, obj) if obj >= 0 else _head(1, -1 - obj))
    elif isinstance(obj, (bytes, bytearray)):
        out.append(_head(2, len(obj)))
        out.append(bytes(obj))
    elif isinstance(obj, str):
        b = obj.encode()
        out.append(_head(3, len(b)))
        out.append(b)
    elif isinstance(obj, (list, tuple)):
        out.append(_head(4, len(obj)))
        for x in obj:
            _enc(x, out)
    elif isinstance(obj, dict):
        items = sorted((dumps(k), v) for k, v in obj.items())
        out.append(_head(5, len(items)))
        for kb, v in items:
            out.append(kb)
            _enc(v, out)
    else:
        raise ValueError("cannot encode %s" % type(obj).__name__)


def dumps(obj):
    out = []
    _enc(obj, out)
    return b"".join(out)


def tagged(tag, obj):
    return _head(6, tag) + dumps(obj)
