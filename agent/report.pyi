from typing import Any

def kid(public: bytes) -> bytes: ...
def device_id(public: bytes) -> str: ...
def prev_hash(data: bytes) -> bytes: ...
def build_claims(
    seq: int,
    bootcount: int,
    uptime: int,
    interval: int,
    iat: int | None = ...,
    prev: bytes | None = ...,
    storage: Any = ...,
    net: Any = ...,
    bw: Any = ...,
    rssi: int | None = ...,
    link_mbps: int | None = ...,
    dropped: int = ...,
    errors: dict[str, str] | None = ...,
    nonce: bytes | None = ...,
) -> dict[int, Any]: ...
def build_birth(
    board: str,
    swname: str,
    swversion: str,
    bootcount: int,
    public: bytes,
    caps: list[str],
    runtime: str,
    iat: int | None = ...,
) -> dict[int, Any]: ...
def sign_report(secret: bytes, public: bytes, claims: dict[Any, Any]) -> bytes: ...
