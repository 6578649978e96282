"""Build and sign one Surge report (portable: CPython and MicroPython).

Self-contained on purpose: on a 64 KB board heap this module, agent.cborw,
firmware_shim.ed25519 and sha512 are all the signing path loads (the claim
key numbers are repeated here as const() so surge_protocol.claims, which carries
name tables for display, stays out of device RAM).  The output is the
COSE_Sign1 that firmware_shim.cose.sign1 produces, byte for byte.
"""

import hashlib
import sys

from agent import cborw

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

# Claim keys: surge_protocol/claims.py is the reference (tests check they agree).
_IAT = const(6)
_NONCE = const(10)
_HWMODEL = const(259)
_UPTIME = const(261)
_BOOTCOUNT = const(267)
_SWNAME = const(270)
_SWVERSION = const(271)
_SURGE = const(-65537)
_SEQ = const(1)
_STORAGE_TOTAL = const(2)
_STORAGE_FREE = const(3)
_NET_RX = const(4)
_NET_TX = const(5)
_BW_UP = const(6)
_BW_DOWN = const(7)
_RSSI = const(8)
_LINK_MBPS = const(9)
_INTERVAL = const(10)
_PREV = const(11)
_SYNCED = const(12)
_DROPPED = const(13)
_ERRORS = const(14)
_NEXT_PUBKEY = const(15)
_PUBKEY = const(20)
_CAPS = const(21)
_RUNTIME = const(22)


def kid(public):
    """COSE key id / device identity: first 8 bytes of SHA-256(public key)."""
    return hashlib.sha256(bytes(public)).digest()[:8]


def device_id(public):
    return "".join("%02x" % b for b in kid(public))


def prev_hash(data):
    """PREV claim for the report after ``data``: SHA-256(COSE bytes)[:16]."""
    return hashlib.sha256(bytes(data)).digest()[:16]


def build_claims(seq, bootcount, uptime, interval, iat=None, prev=None,
                 storage=None, net=None, bw=None, rssi=None, link_mbps=None,
                 dropped=0, errors=None, nonce=None, next_pubkey=None):
    """The claims map of a report.

    ``iat`` is given only when the clock is synced; otherwise the report says
    so (SYNCED false) instead of carrying a made-up time.  ``storage``, ``net``
    and ``bw`` are pairs (total, free), (rx, tx) and (up, down); a probe that
    failed is left as None and named in ``errors``.
    """
    s = {_SEQ: seq, _INTERVAL: interval, _SYNCED: iat is not None, _DROPPED: dropped}
    if prev is not None:
        s[_PREV] = prev
    if storage is not None:
        s[_STORAGE_TOTAL] = storage[0]
        s[_STORAGE_FREE] = storage[1]
    if net is not None:
        s[_NET_RX] = net[0]
        s[_NET_TX] = net[1]
    if bw is not None:
        if bw[0] is not None:
            s[_BW_UP] = bw[0]
        if bw[1] is not None:
            s[_BW_DOWN] = bw[1]
    if rssi is not None:
        s[_RSSI] = rssi
    if link_mbps is not None:
        s[_LINK_MBPS] = link_mbps
    if errors:
        s[_ERRORS] = errors
    if next_pubkey is not None:  # key rotation (protocol §3.1)
        s[_NEXT_PUBKEY] = next_pubkey
    out = {_UPTIME: uptime, _BOOTCOUNT: bootcount, _SURGE: s}
    if iat is not None:
        out[_IAT] = iat
    if nonce is not None:
        out[_NONCE] = nonce
    return out


def build_birth(board, swname, swversion, bootcount, public, caps, runtime, iat=None):
    """Claims of the retained birth message (protocol §4.3): hwmodel is a byte
    string and swversion an array, as RFC 9711 registers them."""
    s = {_PUBKEY: public, _CAPS: caps, _RUNTIME: runtime}
    out = {_HWMODEL: board.encode(), _SWNAME: swname, _SWVERSION: [swversion],
           _BOOTCOUNT: bootcount, _SURGE: s}
    if iat is not None:
        out[_IAT] = iat
    return out


# Encoded protected header {1: -8, 4: kid} minus the 8 kid bytes: a2 01 27 04 48.
_PROTECTED_HEAD = const(b"\xa2\x01\x27\x04\x48")
# Sig_structure's head up to protected's bytes: array(4), "Signature1",
# bstr(13); then the empty external_aad (40) before the payload's head.
_SIG_HEAD = const(b"\x84\x6aSignature1\x4d\x40")


def sign_report(secret, public, claims):
    """COSE_Sign1 bytes of ``claims`` signed with the device key (RFC 9052 §4.2)."""
    payload = cborw.dumps(claims)
    protected = _PROTECTED_HEAD + kid(public)
    # The Sig_structure ["Signature1", protected, b"", payload] as pieces:
    # its head (array, text, protected's head) is constant, then protected,
    # the empty bstr and the payload's own head.  Signed as pieces, so the
    # payload is never copied into a second message-sized block.
    head = bytearray(_SIG_HEAD)
    cborw.head(head, 2, len(payload))
    tbs = (head[:13], protected, head[13:], payload)
    # Ed25519 is deterministic: libsodium (CPython hosts with PyNaCl) and the
    # portable code give the same bytes; the portable one is ~50x slower.
    # (A board does not even try the import: a failed one interns its names.)
    sig = None
    if sys.implementation.name != "micropython":
        try:
            from nacl.signing import SigningKey
            sig = SigningKey(bytes(secret)).sign(b"".join(tbs)).signature
        except ImportError:
            pass
    if sig is None:
        from firmware_shim import ed25519
        sig = ed25519.sign(secret, tbs, public)
    head = tbs = None  # not live while the result is built
    return cborw.tagged(18, [protected, {}, payload, sig])
