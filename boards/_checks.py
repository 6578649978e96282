"""Field checks for board profiles.

Each check takes a raw JSON value and returns the normalised value or raises
``Invalid`` carrying the wording that completes "field 'x' must be ...".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Final

# The -march choices of mpy-cross; the bundle builder passes this through.
MPY_ARCHES: Final = (
    "x86",
    "x64",
    "armv6",
    "armv6m",
    "armv7m",
    "armv7em",
    "armv7emsp",
    "armv7emdp",
    "xtensa",
    "xtensawin",
    "rv32imc",
)

# Linux caps interface names at IFNAMSIZ - 1 = 15 bytes.
_INTERFACE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# MicroPython's board directory names (ports/*/boards/NAME).
_FIRMWARE_BOARD = re.compile(r"^[A-Z0-9_]{1,64}$")

Check = Callable[[Any], Any]


class Invalid(Exception):
    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def show(value: object) -> str:
    """Render a bad value the way it was written in the JSON file."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(value: object, expected: str) -> int:
    # JSON true/false arrive as bool, a subclass of int; 1.0 arrives as float.
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(expected)
    return value


def positive_int(value: object) -> int:
    n = _int(value, "a positive integer")
    if n <= 0:
        raise Invalid("a positive integer")
    return n


def non_negative_int(value: object) -> int:
    n = _int(value, "a non-negative integer")
    if n < 0:
        raise Invalid("a non-negative integer")
    return n


def int_at_least(low: int) -> Check:
    expected = f"an integer of at least {low}"

    def check(value: object) -> int:
        n = _int(value, expected)
        if n < low:
            raise Invalid(expected)
        return n

    return check


def int_between(low: int, high: int) -> Check:
    expected = f"an integer from {low} to {high}"

    def check(value: object) -> int:
        n = _int(value, expected)
        if not low <= n <= high:
            raise Invalid(expected)
        return n

    return check


def text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid("a non-empty string")
    return value


def any_text(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid("a string")
    return value


def one_of(*choices: str) -> Check:
    expected = "one of " + ", ".join(json.dumps(c) for c in choices)

    def check(value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            raise Invalid(expected)
        return value

    return check


def optional(inner: Check) -> Check:
    def check(value: object) -> Any:
        return None if value is None else inner(value)

    return check


def interface_name(value: object) -> str:
    if not isinstance(value, str) or not _INTERFACE.match(value):
        raise Invalid("a network interface name of 1-15 letters, digits, '_', '.', ':' or '-'")
    return value


def firmware_board(value: object) -> str:
    if not isinstance(value, str) or not _FIRMWARE_BOARD.match(value):
        raise Invalid('a MicroPython board name such as "ESP32_GENERIC"')
    return value


def _string_list(value: object, expected: str, item_ok: Callable[[str], bool]) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise Invalid(expected)
    items: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item_ok(item) or item in items:
            raise Invalid(expected)
        items.append(item)
    return tuple(items)


def mount_list(value: object) -> tuple[str, ...]:
    return _string_list(
        value,
        "a non-empty list of distinct absolute paths",
        lambda p: p.startswith("/") and "\x00" not in p and (p == "/" or not p.endswith("/")),
    )


def module_list(value: object) -> tuple[str, ...]:
    return _string_list(
        value,
        "a non-empty list of distinct module names",
        lambda m: _MODULE.match(m) is not None,
    )
