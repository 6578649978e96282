"""Claim keys of the Surge report (wire protocol v1, docs/protocol.md).

Registered EAT/CWT keys are used where one exists; the capacity figures live
in one private-use claim (-65537) holding a map with small integer keys, so
that each figure costs one key byte instead of five.  Portable: runs on the
device and on the gateway.
"""

import binascii

# Identity and chaining are defined in ids.py; re-exported for callers.
from surge_protocol.ids import DEVICE_ID_BYTES, PREV_BYTES, device_id, kid, prev_hash  # noqa: F401

# CWT / EAT registered claim keys (IANA "CBOR Web Token (CWT) Claims").
IAT = 6
NONCE = 10
UEID = 256
HWMODEL = 259
UPTIME = 261
BOOTCOUNT = 267
SWNAME = 270
SWVERSION = 271
# Private use (CWT registry: integers below -65536).
SURGE = -65537

# Keys inside the SURGE map.
SEQ = 1
STORAGE_TOTAL = 2
STORAGE_FREE = 3
NET_RX = 4
NET_TX = 5
BW_UP = 6
BW_DOWN = 7
RSSI = 8
LINK_MBPS = 9
INTERVAL = 10
PREV = 11
SYNCED = 12
DROPPED = 13
ERRORS = 14
NEXT_PUBKEY = 15  # key rotation: the Ed25519 public key that signs after this report is anchored
# Birth message only.
PUBKEY = 20
CAPS = 21
RUNTIME = 22

NAMES = {
    IAT: "iat", NONCE: "nonce", UEID: "ueid", HWMODEL: "hwmodel", UPTIME: "uptime",
    BOOTCOUNT: "bootcount", SWNAME: "swname", SWVERSION: "swversion", SURGE: "surge",
}
SURGE_NAMES = {
    SEQ: "seq", STORAGE_TOTAL: "storage_total", STORAGE_FREE: "storage_free",
    NET_RX: "net_rx", NET_TX: "net_tx", BW_UP: "bw_up", BW_DOWN: "bw_down",
    RSSI: "rssi", LINK_MBPS: "link_mbps", INTERVAL: "interval", PREV: "prev",
    SYNCED: "synced", DROPPED: "dropped", ERRORS: "errors", NEXT_PUBKEY: "next_pubkey",
    PUBKEY: "pubkey", CAPS: "caps", RUNTIME: "runtime",
}

# Largest report the gateway accepts (docs/protocol.md "Size limits").
MAX_REPORT_BYTES = 1024


def _jsonable(v):
    if isinstance(v, (bytes, bytearray)):
        return binascii.hexlify(v).decode()
    if isinstance(v, dict):
        return dict((str(k), _jsonable(x)) for k, x in v.items())
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def named(claims):
    """Claims with names instead of keys and byte strings as hex, for JSON."""
    out = {}
    for k, v in claims.items():
        if k == SURGE and isinstance(v, dict):
            for sk, sv in v.items():
                out[SURGE_NAMES.get(sk, "surge_%s" % sk)] = _jsonable(sv)
        else:
            out[NAMES.get(k, "claim_%s" % k)] = _jsonable(v)
    return out
