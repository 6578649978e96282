"""Build and sign one Surge report (portable: CPython and MicroPython)."""

from firmware_shim import cbor, cose
from agent import claims as C


def build_claims(seq, bootcount, uptime, interval, iat=None, prev=None,
                 storage=None, net=None, bw=None, rssi=None, link_mbps=None,
                 dropped=0, errors=None, nonce=None):
    """The claims map of a report.

    ``iat`` is given only when the clock is synced; otherwise the report says
    so (SYNCED false) instead of carrying a made-up time.  ``storage``, ``net``
    and ``bw`` are pairs (total, free), (rx, tx) and (up, down); a probe that
    failed is left as None and named in ``errors``.
    """
    s = {C.SEQ: seq, C.INTERVAL: interval, C.SYNCED: iat is not None, C.DROPPED: dropped}
    if prev is not None:
        s[C.PREV] = prev
    if storage is not None:
        s[C.STORAGE_TOTAL] = storage[0]
        s[C.STORAGE_FREE] = storage[1]
    if net is not None:
        s[C.NET_RX] = net[0]
        s[C.NET_TX] = net[1]
    if bw is not None:
        if bw[0] is not None:
            s[C.BW_UP] = bw[0]
        if bw[1] is not None:
            s[C.BW_DOWN] = bw[1]
    if rssi is not None:
        s[C.RSSI] = rssi
    if link_mbps is not None:
        s[C.LINK_MBPS] = link_mbps
    if errors:
        s[C.ERRORS] = errors
    out = {C.UPTIME: uptime, C.BOOTCOUNT: bootcount, C.SURGE: s}
    if iat is not None:
        out[C.IAT] = iat
    if nonce is not None:
        out[C.NONCE] = nonce
    return out


def sign_report(secret, public, claims):
    """COSE_Sign1 bytes of ``claims`` signed with the device key."""
    return cose.sign1(cbor.dumps(claims), secret, C.kid(public), public)
