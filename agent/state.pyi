from typing import Any

class State:
    path: str
    boot: int
    seq: int
    prev: bytes | None
    dropped: int
    interval: Any
    def __init__(self, path: str) -> None: ...
    def load(self) -> bool: ...
    def save(self) -> None: ...
