from typing import Any

MAX_BYTES: int

def handle(agent: Any, msg: bytes) -> None: ...
