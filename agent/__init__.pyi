# Types of agent/__init__.py (device code stays untyped for MicroPython).
VERSION: str

def log(msg: str) -> None: ...
