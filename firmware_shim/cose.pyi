from typing import Any

COSE_SIGN1_TAG: int
ALG: int
KID: int
CRIT: int
EDDSA: int
PROTECTED_EDDSA: bytes

class COSEError(ValueError):
    reason: str
    detail: str
    def __init__(self, reason: str, detail: str) -> None: ...

class Sign1:
    protected: bytes
    header: dict[Any, Any]
    unprotected: dict[Any, Any]
    payload: bytes
    signature: bytes
    def __init__(
        self, protected: bytes, header: dict[Any, Any], unprotected: dict[Any, Any], payload: bytes, signature: bytes
    ) -> None: ...
    @property
    def kid(self) -> Any: ...
    def to_be_signed(self, external_aad: bytes = ...) -> bytes: ...

def sig_structure(protected: bytes, payload: bytes, external_aad: bytes = ...) -> bytes: ...
def sign1(payload: bytes, secret: bytes, kid: bytes | None, public: bytes | None = ...) -> bytes: ...
def parse_sign1(data: bytes, max_depth: int = ...) -> Sign1: ...
def verify_sign1(msg: Sign1 | bytes, public: bytes, external_aad: bytes = ...) -> bool: ...
