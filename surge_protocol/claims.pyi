# Types of surge_protocol/claims.py (portable code stays untyped for MicroPython).
from typing import Any, Mapping

IAT: int
NONCE: int
UEID: int
HWMODEL: int
UPTIME: int
BOOTCOUNT: int
SWNAME: int
SWVERSION: int
SURGE: int
SEQ: int
STORAGE_TOTAL: int
STORAGE_FREE: int
NET_RX: int
NET_TX: int
BW_UP: int
BW_DOWN: int
RSSI: int
LINK_MBPS: int
INTERVAL: int
PREV: int
SYNCED: int
DROPPED: int
ERRORS: int
NEXT_PUBKEY: int
PUBKEY: int
CAPS: int
RUNTIME: int
NAMES: dict[int, str]
SURGE_NAMES: dict[int, str]
DEVICE_ID_BYTES: int
PREV_BYTES: int
MAX_REPORT_BYTES: int

def kid(public: bytes) -> bytes: ...
def device_id(public: bytes) -> str: ...
def prev_hash(report: bytes) -> bytes: ...
def named(claims: Mapping[Any, Any]) -> dict[str, Any]: ...
