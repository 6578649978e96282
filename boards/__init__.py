"""Board profiles: one JSON file per board, resolved and validated here.

A profile says what a board is (runtime, CPU, memory, flash), how the agent
should run on it (heap budget, mounts to measure, network interface, report
interval, firmware modules) and what it can honestly claim (plausibility
ceilings the gateway checks reports against).

Files whose name starts with ``_`` are abstract bases, never boards.  A file
may name a parent with ``"inherits"``; keys are merged parent first, child
last, whole values replaced (lists are not concatenated).  A board's name is
its own file's ``"name"`` or, failing that, its file name; it is never
inherited.  See ``boards/README.md`` for every field.

Host-side only (CPython): the firmware bundle builder reads a profile and
bakes the few values the device needs into the bundle.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from difflib import get_close_matches
from os import PathLike
from pathlib import Path
from typing import Any, Final, Literal, cast

from . import _checks as chk

__all__ = ["BOARDS_DIR", "BoardError", "BoardProfile", "load", "load_file", "names"]

BOARDS_DIR: Final = Path(__file__).resolve().parent
# Shown in messages instead of the absolute install path.
_BUILTIN_DISPLAY: Final = "boards"

Runtime = Literal["micropython", "cpython"]

_PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# Parents may be abstract bases, hence the optional leading underscore.  The
# pattern also keeps a parent reference from escaping its directory.
_PARENT_NAME = re.compile(r"^_?[a-z0-9][a-z0-9._-]{0,63}$")


class BoardError(ValueError):
    """A profile that cannot be found, read, resolved or validated."""


@dataclass(frozen=True)
class BoardProfile:
    name: str
    description: str
    runtime: Runtime
    cpu: str
    ram_bytes: int
    flash_bytes: int
    heap_budget_bytes: int
    mounts: tuple[str, ...]
    net_interface: str
    report_interval_s: int
    max_storage_bytes: int
    max_bw_up_bytes_per_s: int
    max_bw_down_bytes_per_s: int
    modules: tuple[str, ...]
    psram_bytes: int = 0
    mpy_arch: str | None = None
    micropython_board: str | None = None
    notes: str = ""
    # Where it came from, for messages; not part of the profile's identity.
    source: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (tuples become lists; source left out)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "source":
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


_Check = Callable[[Any], Any]
_REQUIRED: Final = object()

# Field -> (check, default).  A check returns the normalised value or raises
# chk.Invalid with the expectation wording used in the error message.
_SCHEMA: Final[Mapping[str, tuple[_Check, object]]] = {
    "description": (chk.text, _REQUIRED),
    "runtime": (chk.one_of("micropython", "cpython"), _REQUIRED),
    "cpu": (chk.text, _REQUIRED),
    "ram_bytes": (chk.positive_int, _REQUIRED),
    "flash_bytes": (chk.non_negative_int, _REQUIRED),
    "heap_budget_bytes": (chk.int_at_least(16 * 1024), _REQUIRED),
    "mounts": (chk.mount_list, _REQUIRED),
    "net_interface": (chk.interface_name, _REQUIRED),
    "report_interval_s": (chk.int_between(10, 86400), _REQUIRED),
    "max_storage_bytes": (chk.positive_int, _REQUIRED),
    "max_bw_up_bytes_per_s": (chk.positive_int, _REQUIRED),
    "max_bw_down_bytes_per_s": (chk.positive_int, _REQUIRED),
    "modules": (chk.module_list, _REQUIRED),
    "psram_bytes": (chk.non_negative_int, 0),
    "mpy_arch": (chk.optional(chk.one_of(*chk.MPY_ARCHES)), None),
    "micropython_board": (chk.optional(chk.firmware_board), None),
    "notes": (chk.any_text, ""),
}
# Keys a file may hold besides the schema's.
_META_KEYS: Final = frozenset({"name", "inherits"})


def names() -> list[str]:
    """Built-in board names, sorted (abstract ``_`` bases left out)."""
    return sorted(p.stem for p in BOARDS_DIR.glob("*.json") if not p.name.startswith("_"))


def load(name: str) -> BoardProfile:
    """Load a built-in board by name."""
    if not isinstance(name, str) or not _PROFILE_NAME.match(name) or name not in names():
        known = ", ".join(names())
        raise BoardError(f"unknown board {name!r} (known boards: {known})")
    path = BOARDS_DIR / f"{name}.json"
    return _load(path, f"{_BUILTIN_DISPLAY}/{path.name}", (BOARDS_DIR,))


def load_file(path: str | PathLike[str]) -> BoardProfile:
    """Load a user-provided profile file.

    Its ``inherits`` may name a file next to it or any built-in profile,
    including the abstract bases (e.g. ``"_esp32-family"``).
    """
    p = Path(path)
    return _load(p, str(path), (p.parent, BOARDS_DIR))


def _display(path: Path) -> str:
    if path.parent == BOARDS_DIR:
        return f"{_BUILTIN_DISPLAY}/{path.name}"
    return str(path)


def _load(path: Path, display: str, search: tuple[Path, ...]) -> BoardProfile:
    own = _read_json(path, display)
    name = own.get("name", path.stem)
    if not isinstance(name, str) or not _PROFILE_NAME.match(name):
        raise BoardError(
            f"{display}: field 'name' must be lowercase letters, digits, '.', '_' or '-' "
            f"(at most 64), got {chk.show(name)}"
        )

    # Walk up the inheritance chain, leaf first.
    chain: list[tuple[str, dict[str, Any]]] = [(display, own)]
    seen = [path.stem]
    current, current_display = own, display
    while "inherits" in current:
        parent = current["inherits"]
        if not isinstance(parent, str) or not _PARENT_NAME.match(parent):
            raise BoardError(f"{current_display}: field 'inherits' must be a profile name, got {chk.show(parent)}")
        if parent in seen:
            cycle = " -> ".join([*seen, parent])
            raise BoardError(f"{current_display}: field 'inherits' makes a cycle: {cycle}")
        parent_path = next((d / f"{parent}.json" for d in search if (d / f"{parent}.json").is_file()), None)
        if parent_path is None:
            raise BoardError(f"{current_display}: field 'inherits' names unknown profile {chk.show(parent)}")
        seen.append(parent)
        current_display = _display(parent_path)
        current = _read_json(parent_path, current_display)
        chain.append((current_display, current))

    # Merge root ancestor first so the board's own values win; remember which
    # file supplied each value so an error blames the right file.
    merged: dict[str, tuple[Any, str]] = {}
    for file_display, data in reversed(chain):
        for key, value in data.items():
            if key not in _SCHEMA and key not in _META_KEYS:
                hint = _closest_field(key)
                suggestion = f"; did you mean {hint!r}?" if hint else ""
                raise BoardError(f"{file_display}: unknown field {key!r}{suggestion}")
            if key not in _META_KEYS:
                merged[key] = (value, file_display)

    values: dict[str, Any] = {"name": name, "source": display}
    for key, (check, default) in _SCHEMA.items():
        if key not in merged:
            if default is _REQUIRED:
                via = f" (not set here nor in {', '.join(seen[1:])})" if len(seen) > 1 else ""
                raise BoardError(f"{display}: missing required field {key!r}{via}")
            values[key] = default
            continue
        value, origin = merged[key]
        try:
            values[key] = check(value)
        except chk.Invalid as exc:
            if origin != display:
                inherited = f" (inherited by board {name!r})"
            elif name != path.stem:
                inherited = f" (board {name!r})"
            else:
                inherited = ""  # the file name already is the board name
            raise BoardError(
                f"{origin}: field {key!r} must be {exc.expected}, got {chk.show(value)}{inherited}"
            ) from None

    _cross_check(values, display)
    return BoardProfile(**values)


def _closest_field(key: str) -> str | None:
    # Units are the usual omission ("ram" for "ram_bytes"), which difflib's
    # ratio scores too low, so try prefixes first.
    prefixed = [f for f in _SCHEMA if f.startswith(key)] if len(key) >= 3 else []
    if len(prefixed) == 1:
        return prefixed[0]
    close = get_close_matches(key, list(_SCHEMA), n=1)
    return close[0] if close else None


def _cross_check(v: Mapping[str, Any], display: str) -> None:
    """Rules that tie fields together; blamed on the board's own file."""
    memory = cast(int, v["ram_bytes"]) + cast(int, v["psram_bytes"])
    if v["heap_budget_bytes"] > memory:
        raise BoardError(
            f"{display}: field 'heap_budget_bytes' must be at most ram_bytes + psram_bytes "
            f"({memory}), got {v['heap_budget_bytes']}"
        )
    if v["max_storage_bytes"] < v["flash_bytes"]:
        raise BoardError(
            f"{display}: field 'max_storage_bytes' must be at least flash_bytes "
            f"({v['flash_bytes']}), got {v['max_storage_bytes']}"
        )
    micropython = v["runtime"] == "micropython"
    if micropython and v["mpy_arch"] is None:
        raise BoardError(
            f"{display}: field 'mpy_arch' is required when runtime is \"micropython\" "
            "(the bundle builder passes it to mpy-cross -march)"
        )
    for key in ("mpy_arch", "micropython_board"):
        if not micropython and v[key] is not None:
            raise BoardError(f'{display}: field {key!r} applies only to runtime "micropython"')


def _read_json(path: Path, display: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BoardError(f"{display}: no such profile file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BoardError(f"{display}: cannot read profile: {exc}") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise BoardError(f"{display}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except _DuplicateKey as exc:
        raise BoardError(f"{display}: field {exc.key!r} appears more than once") from None
    if not isinstance(data, dict):
        raise BoardError(f"{display}: a profile must be a JSON object, got {type(data).__name__}")
    return data


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json silently keeps the last duplicate; in a profile that hides a typo.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out
