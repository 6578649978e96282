"""Spec vectors for the portable core, run unchanged on CPython and MicroPython.

``python -m tests.portable.check_vectors VECTOR_DIR`` or
``micropython tests/portable/check_vectors.py VECTOR_DIR`` (repo root on
MICROPYPATH) prints one line per group and ends with "PASS <checks>"; any
failure raises.  pytest drives it both ways (tests/test_portable_core.py).
"""

import json
import sys

from firmware_shim import cbor, cose, ed25519, sha512
from surge_protocol import claims as C
from agent import report

L = 2 ** 252 + 27742317777372353535851937790883648493


def _load(vdir, name):
    with open(vdir + "/" + name) as f:
        return json.load(f)


def _value(v):
    """JSON vector notation -> the Python value the decoder returns."""
    if isinstance(v, dict):
        if "bytes" in v:
            return bytes.fromhex(v["bytes"])
        if "tag" in v:
            return cbor.Tag(v["tag"], _value(v["value"]))
        m = {}
        for k, x in v["map"]:
            m[_value(k)] = _value(x)
        return m
    if isinstance(v, list):
        return [_value(x) for x in v]
    return v


def _raises(exc_class, fn, *args):
    try:
        fn(*args)
    except exc_class:
        return
    raise AssertionError("%s not raised by %r" % (exc_class.__name__, args))


def _flip(b, i):
    b = bytearray(b)
    b[i] ^= 1
    return bytes(b)


def check_sha512(vdir):
    n = 0
    empty = ("cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
             "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e")
    assert sha512.digest(()) == bytes.fromhex(empty)
    n += 1
    abc = _load(vdir, "rfc8032_ed25519.json")["vectors"][4]["message"]  # TEST SHA(abc) signs SHA-512("abc")
    assert sha512.digest((b"a", b"bc")) == bytes.fromhex(abc)
    n += 1
    # The portable rounds, whatever the runtime has (on CPython against its
    # hashlib): every padding case (a tail of 0, 111, 112 and 127 bytes), and
    # parts split anywhere, of every bytes-like type.
    for size in (0, 1, 111, 112, 127, 128, 129, 239, 240, 300):
        data = bytes(i * 7 & 255 for i in range(size))
        want = sha512.digest((data,))
        for cut in (0, size // 3, size):
            got = sha512.portable((data[:cut], bytearray(data[cut:]), memoryview(b"")))
            assert got == want, (size, cut)
        n += 1
    return n


def check_ed25519(vdir):
    n = 0
    for v in _load(vdir, "rfc8032_ed25519.json")["vectors"]:
        sk = bytes.fromhex(v["secret"])
        pk = bytes.fromhex(v["public"])
        msg = bytes.fromhex(v["message"])
        sig = bytes.fromhex(v["signature"])
        assert ed25519.public_key(sk) == pk, v["name"]
        assert ed25519.sign(sk, msg) == sig, v["name"]
        assert ed25519.verify(pk, msg, sig), v["name"]
        assert not ed25519.verify(pk, msg + b"\x00", sig)
        assert not ed25519.verify(pk, msg, _flip(sig, 0))
        assert not ed25519.verify(pk, msg, _flip(sig, 40))
        assert not ed25519.verify(_flip(pk, 1), msg, sig)
        # S + L is the same scalar, but RFC 8032 requires S < L.
        s_plus_l = (int.from_bytes(sig[32:], "little") + L).to_bytes(32, "little")
        assert not ed25519.verify(pk, msg, sig[:32] + s_plus_l)
        n += 8
    _raises(ed25519.Ed25519Error, ed25519.verify, pk[:31], msg, sig)
    _raises(ed25519.Ed25519Error, ed25519.verify, pk, msg, sig[:63])
    _raises(ed25519.Ed25519Error, ed25519.sign, sk[:31], msg)
    _raises(ed25519.Ed25519Error, ed25519.public_key, sk + b"\x00")
    return n + 4


def check_cbor(vdir):
    n = 0
    doc = _load(vdir, "rfc8949_appendix_a.json")
    for v in doc["roundtrip"]:
        data = bytes.fromhex(v["hex"])
        value = _value(v["value"])
        assert cbor.loads(data) == value, v["hex"]
        assert cbor.dumps(value) == data, v["hex"]
        n += 2
    for h in doc["unsupported"]:
        _raises(cbor.Unsupported, cbor.loads, bytes.fromhex(h))
        n += 1
    for case in _load(vdir, "cbor_malformed.json")["cases"]:
        _raises(getattr(cbor, case["error"]), cbor.loads, bytes.fromhex(case["hex"]))
        n += 1
    # Deterministic map order is bytewise (RFC 8949 §4.2.1), not length-first.
    assert cbor.dumps({256: 0, -1: 0, 6: 0}) == bytes.fromhex("a3060019010000" + "2000")
    _raises(cbor.CBOREncodeError, cbor.dumps, 2 ** 64)
    _raises(cbor.CBOREncodeError, cbor.dumps, 1.5)
    return n + 3


def check_cose(vdir):
    doc = _load(vdir, "cose_sign1.json")
    v = doc["sign1"]
    pk = bytes.fromhex(v["public"])
    sk = bytes.fromhex(v["secret"])
    payload = v["payload_text"].encode()
    data = bytes.fromhex(v["cbor"])
    assert cose.sig_structure(cose.PROTECTED_EDDSA, payload) == bytes.fromhex(v["to_be_signed"])
    msg = cose.parse_sign1(data)
    assert msg.payload == payload and msg.kid == v["kid_text"].encode()
    assert cose.verify_sign1(data, pk)
    assert not cose.verify_sign1(_flip(data, len(data) - 70), pk)  # a payload byte
    ours = cose.sign1(payload, sk, None)  # protected {1: -8} like the vector
    assert cose.verify_sign1(ours, pk) and cose.parse_sign1(ours).signature == msg.signature
    with_kid = cose.sign1(payload, sk, b"11")
    assert cose.parse_sign1(with_kid).header == {1: -8, 4: b"11"} and cose.verify_sign1(with_kid, pk)

    r = doc["reference_report"]
    c = r["claims"]
    claims = report.build_claims(
        seq=c["seq"], bootcount=c["bootcount"], uptime=c["uptime"], interval=c["interval"],
        iat=c["iat"], prev=bytes.fromhex(c["prev"]), storage=c["storage"], net=c["net"],
        bw=c["bw"], rssi=c["rssi"], dropped=c["dropped"])
    ref = report.sign_report(bytes.fromhex(r["secret"]), bytes.fromhex(r["public"]), claims)
    assert ref == bytes.fromhex(r["cbor"]), "reference report bytes changed"
    assert len(ref) == r["size"] and len(ref) <= 200
    assert cose.verify_sign1(ref, bytes.fromhex(r["public"]))
    assert cose.parse_sign1(ref).kid == C.kid(bytes.fromhex(r["public"]))

    for bad, reason in ((b"\xd3" + data[1:], "not_cose_sign1"), (data[:-1], "malformed_cbor"),
                        (bytes.fromhex("d28443a10126") + data[6:], "unsupported_alg"),
                        (bytes.fromhex("d283") + data[2:], "malformed_cbor")):
        try:
            cose.parse_sign1(bad)
            raise AssertionError("accepted " + reason)
        except cose.COSEError as exc:
            assert exc.reason == reason, (exc.reason, reason)
    return 14


def main(vdir):
    total = 0
    for name, fn in (("sha512", check_sha512), ("ed25519", check_ed25519),
                     ("cbor", check_cbor), ("cose", check_cose)):
        n = fn(vdir)
        print("%s: %d checks" % (name, n))
        total += n
    print("PASS %d" % total)
    return total


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/vectors")
