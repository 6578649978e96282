"""Deterministic CBOR (RFC 8949) for the subset the Surge protocol uses.

Types: unsigned and negative integers (up to 64 bits), byte strings, text
strings, arrays, maps, tags, false, true and null.  ``dumps`` always produces
the core deterministic encoding of RFC 8949 §4.2.1: shortest argument forms,
definite lengths, map keys sorted bytewise by their own encodings.  ``loads``
accepts any well-formed definite-length input of that subset, rejects
everything else with a typed error, and never recurses past ``max_depth``.
Runs unchanged on MicroPython.
"""

MAX_DEPTH = 16


class CBORError(ValueError):
    """Base class of every error this module raises."""


class CBOREncodeError(CBORError):
    """The value has a type or size outside the supported subset."""


class CBORDecodeError(CBORError):
    """The input is not a well-formed item of the supported subset."""


class Truncated(CBORDecodeError):
    """The input ends before the item does (or claims more bytes than it has)."""


class TrailingData(CBORDecodeError):
    """Bytes follow the single top-level item."""


class Malformed(CBORDecodeError):
    """Reserved additional info, bad UTF-8, duplicate or unhashable map key."""


class Unsupported(CBORDecodeError):
    """Well-formed CBOR outside the protocol subset (floats, indefinite lengths)."""


class TooDeep(CBORDecodeError):
    """Arrays, maps and tags nest deeper than the limit."""


class Tag:
    """A tagged item: ``Tag(18, [...])`` for COSE_Sign1."""

    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and self.tag == other.tag and self.value == other.value

    def __repr__(self):
        return "Tag(%d, %r)" % (self.tag, self.value)


def _head(major, n):
    mt = major << 5
    if n < 24:
        return bytes((mt | n,))
    if n < 0x100:
        return bytes((mt | 24, n))
    if n < 0x10000:
        return bytes((mt | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((mt | 26,)) + n.to_bytes(4, "big")
    if n < 0x10000000000000000:
        return bytes((mt | 27,)) + n.to_bytes(8, "big")
    raise CBOREncodeError("integer does not fit in 64 bits")


def _enc(obj, out, depth):
    if depth > MAX_DEPTH:
        raise CBOREncodeError("nesting deeper than %d" % MAX_DEPTH)
    # bool before int: True is an int on both runtimes.
    if obj is False:
        out.append(b"\xf4")
    elif obj is True:
        out.append(b"\xf5")
    elif obj is None:
        out.append(b"\xf6")
    elif isinstance(obj, int):
        if obj >= 0:
            out.append(_head(0, obj))
        else:
            out.append(_head(1, -1 - obj))
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        out.append(_head(2, len(obj)))
        out.append(bytes(obj))
    elif isinstance(obj, str):
        b = obj.encode("utf-8")
        out.append(_head(3, len(b)))
        out.append(b)
    elif isinstance(obj, (list, tuple)):
        out.append(_head(4, len(obj)))
        for item in obj:
            _enc(item, out, depth + 1)
    elif isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            kb = []
            _enc(k, kb, depth + 1)
            items.append((b"".join(kb), v))
        items.sort(key=lambda kv: kv[0])
        out.append(_head(5, len(items)))
        for kb, v in items:
            out.append(kb)
            _enc(v, out, depth + 1)
    elif isinstance(obj, Tag):
        out.append(_head(6, obj.tag))
        _enc(obj.value, out, depth + 1)
    else:
        raise CBOREncodeError("cannot encode %s" % type(obj).__name__)


def dumps(obj):
    """The deterministic encoding of ``obj`` (RFC 8949 §4.2.1)."""
    out = []
    _enc(obj, out, 0)
    return b"".join(out)


class _Decoder:
    def __init__(self, data, max_depth):
        self.data = data
        self.pos = 0
        self.max_depth = max_depth

    def _take(self, n):
        end = self.pos + n
        if end > len(self.data):
            raise Truncated("needs %d more bytes at offset %d, input has %d"
                            % (n, self.pos, len(self.data) - self.pos))
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def _arg(self, info):
        if info < 24:
            return info
        if info == 24:
            return self._take(1)[0]
        if info == 25:
            return int.from_bytes(self._take(2), "big")
        if info == 26:
            return int.from_bytes(self._take(4), "big")
        if info == 27:
            return int.from_bytes(self._take(8), "big")
        if info == 31:
            raise Unsupported("indefinite length at offset %d" % (self.pos - 1))
        raise Malformed("reserved additional info %d at offset %d" % (info, self.pos - 1))

    def _count(self, n, min_item):
        # A length the rest of the input cannot possibly hold is rejected before
        # anything is allocated for it.
        if n * min_item > len(self.data) - self.pos:
            raise Truncated("length %d at offset %d exceeds the %d bytes left"
                            % (n, self.pos, len(self.data) - self.pos))
        return n

    def item(self, depth):
        start = self.pos
        ib = self._take(1)[0]
        major = ib >> 5
        info = ib & 31
        if major == 7:
            if info == 20:
                return False
            if info == 21:
                return True
            if info == 22:
                return None
            if info in (25, 26, 27):
                raise Unsupported("floating-point value at offset %d" % start)
            if info == 31:
                raise Malformed("unexpected break at offset %d" % start)
            raise Unsupported("simple value %d at offset %d" % (info, start))
        n = self._arg(info)
        if major == 0:
            return n
        if major == 1:
            return -1 - n
        if major == 2:
            return bytes(self._take(self._count(n, 1)))
        if major == 3:
            raw = self._take(self._count(n, 1))
            try:
                return str(raw, "utf-8")
            except UnicodeError:
                raise Malformed("invalid UTF-8 in text string at offset %d" % start)
        if depth >= self.max_depth:
            raise TooDeep("nesting deeper than %d at offset %d" % (self.max_depth, start))
        if major == 4:
            return [self.item(depth + 1) for _ in range(self._count(n, 1))]
        if major == 5:
            m = {}
            for _ in range(self._count(n, 2)):
                kpos = self.pos
                k = self.item(depth + 1)
                if isinstance(k, (list, dict, Tag)):
                    raise Malformed("map key at offset %d is not an int, string, bool or null" % kpos)
                if k in m:
                    raise Malformed("duplicate map key %r at offset %d" % (k, kpos))
                m[k] = self.item(depth + 1)
            return m
        return Tag(n, self.item(depth + 1))


def loads(data, max_depth=MAX_DEPTH):
    """Decode exactly one item; anything after it is an error."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CBORDecodeError("expected bytes, got %s" % type(data).__name__)
    dec = _Decoder(bytes(data), max_depth)
    obj = dec.item(0)
    if dec.pos != len(dec.data):
        raise TrailingData("%d bytes after the item ending at offset %d"
                           % (len(dec.data) - dec.pos, dec.pos))
    return obj

