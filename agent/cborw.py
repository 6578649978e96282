"""Deterministic CBOR encoder for the device (portable, write-only).

The device only ever writes CBOR, and firmware_shim.cbor (decoder, error
types) costs ~8 KB of a 64 KB heap; this encoder is the same RFC 8949
§4.2.1 encoding (shortest heads, keys sorted bytewise by their encodings)
for the types reports use, in a fraction of that.  tests/test_agent_units.py
pins it to firmware_shim.cbor byte for byte on both runtimes.

Everything is appended to one bytearray: on a fragmented board heap a list
of pieces joined at the end needs a block of 8 bytes per piece (512 bytes
for a birth message) on top of the result.
"""


def head(out, major, n):
    """Append the head of a major type with argument ``n`` (RFC 8949 §3)."""
    mt = major << 5
    if n < 24:
        out.append(mt | n)
        return
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            out.append(mt | extra)
            out.extend(n.to_bytes(size, "big"))
            return
    raise ValueError("integer does not fit in 64 bits")


def encode_into(obj, out):
    """Append the encoding of ``obj`` to the bytearray ``out``."""
    # bool before int: True is an int on both runtimes.
    if obj is False or obj is True:
        out.append(0xF5 if obj else 0xF4)
    elif obj is None:
        out.append(0xF6)
    elif isinstance(obj, int):
        if obj >= 0:
            head(out, 0, obj)
        else:
            head(out, 1, -1 - obj)
    elif isinstance(obj, (bytes, bytearray)):
        head(out, 2, len(obj))
        out.extend(obj)
    elif isinstance(obj, str):
        b = obj.encode()
        head(out, 3, len(b))
        out.extend(b)
    elif isinstance(obj, (list, tuple)):
        head(out, 4, len(obj))
        for x in obj:
            encode_into(x, out)
    elif isinstance(obj, dict):
        items = sorted((dumps(k), v) for k, v in obj.items())
        head(out, 5, len(items))
        for kb, v in items:
            out.extend(kb)
            encode_into(v, out)
    else:
        raise ValueError("cannot encode %s" % type(obj).__name__)


def dumps(obj):
    out = bytearray()
    encode_into(obj, out)
    return bytes(out)


def tagged(tag, obj):
    out = bytearray()
    head(out, 6, tag)
    encode_into(obj, out)
    return bytes(out)
