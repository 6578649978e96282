"""Board profiles: every built-in board, inheritance, validation, the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import boards
from boards import BoardError, BoardProfile, load, load_file, names
from boards.cli import add_parser, human_bytes

EXPECTED = {
    "esp32",
    "esp32-s3",
    "esp32-c3",
    "rpi-pico-w",
    "rpi-zero-2w",
    "rpi-4",
    "rpi-5",
    "linux-generic",
}
KIB = 1024
MIB = 1024 * KIB


def write(directory: Path, name: str, data: Any) -> Path:
    path = directory / f"{name}.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))
    return path


def complete(**overrides: Any) -> dict[str, Any]:
    """A valid stand-alone CPython profile, to break one field at a time."""
    data: dict[str, Any] = {
        "description": "test board",
        "runtime": "cpython",
        "cpu": "test cpu",
        "ram_bytes": 64 * MIB,
        "flash_bytes": 0,
        "heap_budget_bytes": 8 * MIB,
        "mounts": ["/"],
        "net_interface": "eth0",
        "report_interval_s": 60,
        "max_storage_bytes": 10**12,
        "max_bw_up_bytes_per_s": 10**6,
        "max_bw_down_bytes_per_s": 10**6,
        "modules": ["agent"],
    }
    data.update(overrides)
    return data


# -- the built-in boards -------------------------------------------------------


def test_names_are_exactly_the_supported_boards() -> None:
    assert set(names()) == EXPECTED
    assert names() == sorted(names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_board_loads_and_is_sane(name: str) -> None:
    p = load(name)
    assert isinstance(p, BoardProfile)
    assert p.name == name
    assert p.source == f"boards/{name}.json"
    assert p.description and p.cpu
    assert 0 < p.heap_budget_bytes <= p.ram_bytes + p.psram_bytes
    assert p.max_storage_bytes >= p.flash_bytes
    assert p.max_bw_up_bytes_per_s > 0 and p.max_bw_down_bytes_per_s > 0
    assert "/" in p.mounts
    assert "agent" in p.modules
    if p.runtime == "micropython":
        assert p.mpy_arch is not None and p.micropython_board is not None
        assert p.net_interface == "sta"
        assert "firmware_shim" in p.modules
        # A MicroPython board can claim no more than flash plus a 2 TB card.
        assert p.max_storage_bytes <= p.flash_bytes + 2 * 10**12
        assert p.max_bw_up_bytes_per_s <= 10 * 10**6
    else:
        assert p.runtime == "cpython"
        assert p.mpy_arch is None and p.micropython_board is None
    # to_dict is plain JSON and round-trips through load_file.
    assert json.loads(json.dumps(p.to_dict())) == p.to_dict()


def test_datasheet_figures() -> None:
    assert load("esp32").ram_bytes == 520 * KIB
    assert load("esp32-s3").ram_bytes == 512 * KIB
    assert load("esp32-c3").ram_bytes == 400 * KIB
    assert load("rpi-pico-w").ram_bytes == 264 * KIB
    assert load("rpi-pico-w").flash_bytes == 2 * MIB
    assert load("esp32").psram_bytes == 0
    assert 48 * KIB <= load("esp32").heap_budget_bytes <= 64 * KIB
    assert load("rpi-4").max_bw_down_bytes_per_s == 125_000_000  # gigabit line rate
    assert load("rpi-zero-2w").net_interface == "wlan0"
    assert load("esp32-c3").mpy_arch == "rv32imc"
    assert load("rpi-pico-w").mpy_arch == "armv6m"


def test_profile_is_frozen() -> None:
    p = load("esp32")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.ram_bytes = 1  # type: ignore[misc]


def test_round_trip_through_a_user_file(tmp_path: Path) -> None:
    for name in names():
        p = load(name)
        again = load_file(write(tmp_path, name, p.to_dict()))
        assert again == p


# -- inheritance ---------------------------------------------------------------


def test_builtin_inheritance_chain() -> None:
    esp32, c3 = load("esp32"), load("esp32-c3")
    # From _esp32-family, overridden by esp32-c3 only.
    assert esp32.mpy_arch == "xtensawin" and c3.mpy_arch == "rv32imc"
    assert esp32.max_bw_up_bytes_per_s == c3.max_bw_up_bytes_per_s
    # From _micropython and _base.
    assert esp32.mounts == ("/", "/sd") and esp32.report_interval_s == 300
    assert esp32.modules == ("agent", "firmware_shim")
    # From _linux.
    assert load("rpi-4").report_interval_s == 60 and load("rpi-4").flash_bytes == 0


def test_user_file_inherits_a_builtin_board(tmp_path: Path) -> None:
    path = write(tmp_path, "my-esp32", {"inherits": "esp32", "report_interval_s": 120, "mounts": ["/"]})
    p = load_file(path)
    base = load("esp32")
    assert p.name == "my-esp32"  # the name is never inherited
    assert p.report_interval_s == 120
    assert p.mounts == ("/",)  # lists are replaced, not merged
    assert dataclasses.replace(p, name="esp32", report_interval_s=300, mounts=("/", "/sd")) == base
    assert p.source == str(path)


def test_user_file_inherits_a_sibling_file_and_an_abstract_base(tmp_path: Path) -> None:
    write(tmp_path, "_fleet", {"inherits": "_esp32-family", "report_interval_s": 900})
    path = write(
        tmp_path,
        "node",
        {
            "inherits": "_fleet",
            "name": "node-7",
            "description": "fleet node",
            "cpu": "ESP32",
            "ram_bytes": 520 * KIB,
            "flash_bytes": 16 * MIB,
            "heap_budget_bytes": 60 * KIB,
            "max_storage_bytes": 16 * MIB,
        },
    )
    p = load_file(path)
    assert p.name == "node-7"
    assert p.report_interval_s == 900
    assert p.mpy_arch == "xtensawin"
    assert p.micropython_board is None  # optional, defaulted


# -- invalid profiles name the file and the field --------------------------------


@pytest.fixture
def builtin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for the boards/ folder, so messages read boards/NAME.json."""
    monkeypatch.setattr(boards, "BOARDS_DIR", tmp_path)
    return tmp_path


def test_wrong_type_message_is_exact(builtin_dir: Path) -> None:
    write(builtin_dir, "esp32", complete(ram_bytes="lots"))
    with pytest.raises(BoardError) as err:
        load("esp32")
    assert str(err.value) == "boards/esp32.json: field 'ram_bytes' must be a positive integer, got \"lots\""


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("ram_bytes", True, "a positive integer"),
        ("ram_bytes", 1.5, "a positive integer"),
        ("ram_bytes", 0, "a positive integer"),
        ("flash_bytes", -1, "a non-negative integer"),
        ("heap_budget_bytes", 1024, "an integer of at least 16384"),
        ("report_interval_s", 5, "an integer from 10 to 86400"),
        ("runtime", "circuitpython", 'one of "micropython", "cpython"'),
        ("description", "", "a non-empty string"),
        ("cpu", 7, "a non-empty string"),
        ("mounts", ["sd"], "absolute paths"),
        ("mounts", [], "a non-empty list"),
        ("mounts", ["/", "/"], "distinct"),
        ("modules", ["agent", "not a module"], "module names"),
        ("modules", "agent", "a non-empty list"),
        ("net_interface", "a-very-long-interface-name", "network interface name"),
        ("max_bw_up_bytes_per_s", None, "a positive integer"),
        ("notes", 3, "a string"),
    ],
)
def test_each_bad_value_names_file_and_field(builtin_dir: Path, field: str, value: Any, expected: str) -> None:
    write(builtin_dir, "board", complete(**{field: value}))
    with pytest.raises(BoardError) as err:
        load("board")
    message = str(err.value)
    assert message.startswith(f"boards/board.json: field '{field}' must be ")
    assert expected in message
    assert f"got {json.dumps(value)}" in message


def test_missing_field(builtin_dir: Path) -> None:
    data = complete()
    del data["cpu"]
    write(builtin_dir, "board", data)
    with pytest.raises(BoardError, match=r"^boards/board\.json: missing required field 'cpu'$"):
        load("board")


def test_missing_field_mentions_the_parents(tmp_path: Path) -> None:
    path = write(tmp_path, "board", {"inherits": "_linux", "description": "x"})
    with pytest.raises(BoardError, match=r"missing required field 'cpu' \(not set here nor in _linux, _base\)"):
        load_file(path)


def test_unknown_field_suggests_the_right_one(builtin_dir: Path) -> None:
    write(builtin_dir, "board", complete(ram=4))
    with pytest.raises(BoardError, match=r"^boards/board\.json: unknown field 'ram'; did you mean 'ram_bytes'\?$"):
        load("board")


def test_cycle(builtin_dir: Path) -> None:
    write(builtin_dir, "a", complete(inherits="b"))
    write(builtin_dir, "b", {"inherits": "a"})
    with pytest.raises(BoardError) as err:
        load("a")
    assert str(err.value) == "boards/b.json: field 'inherits' makes a cycle: a -> b -> a"
    write(builtin_dir, "self", complete(inherits="self"))
    with pytest.raises(BoardError, match="field 'inherits' makes a cycle: self -> self"):
        load("self")


def test_unknown_parent(builtin_dir: Path) -> None:
    write(builtin_dir, "board", complete(inherits="nope"))
    with pytest.raises(BoardError) as err:
        load("board")
    assert str(err.value) == "boards/board.json: field 'inherits' names unknown profile \"nope\""


@pytest.mark.parametrize("parent", ["../etc/passwd", 3, "", "Upper"])
def test_bad_parent_reference(builtin_dir: Path, parent: Any) -> None:
    write(builtin_dir, "board", complete(inherits=parent))
    with pytest.raises(BoardError, match=r"^boards/board\.json: field 'inherits' must be a profile name"):
        load("board")


def test_error_in_a_parent_blames_the_parent_file_and_names_the_board(builtin_dir: Path) -> None:
    write(builtin_dir, "_family", {"report_interval_s": "often"})
    child = complete(inherits="_family")
    del child["report_interval_s"]
    write(builtin_dir, "child", child)
    with pytest.raises(BoardError) as err:
        load("child")
    assert str(err.value) == (
        "boards/_family.json: field 'report_interval_s' must be an integer from 10 to 86400, "
        "got \"often\" (inherited by board 'child')"
    )


def test_a_child_value_hides_a_bad_parent_value(builtin_dir: Path) -> None:
    write(builtin_dir, "_family", {"report_interval_s": "often"})
    write(builtin_dir, "child", complete(inherits="_family"))
    assert load("child").report_interval_s == 60


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (
            {"heap_budget_bytes": 128 * MIB},
            r"'heap_budget_bytes' must be at most ram_bytes \+ psram_bytes",
        ),
        ({"flash_bytes": 10**13}, r"'max_storage_bytes' must be at least flash_bytes"),
        ({"runtime": "micropython"}, r"'mpy_arch' is required when runtime is \"micropython\""),
        ({"mpy_arch": "xtensawin"}, r"'mpy_arch' applies only to runtime \"micropython\""),
        ({"micropython_board": "ESP32_GENERIC"}, r"'micropython_board' applies only"),
        ({"mpy_arch": "z80", "runtime": "micropython"}, r"'mpy_arch' must be one of"),
        (
            {"micropython_board": "esp32", "runtime": "micropython", "mpy_arch": "xtensawin"},
            r"'micropython_board' must be a MicroPython board name",
        ),
    ],
)
def test_cross_field_rules(builtin_dir: Path, overrides: dict[str, Any], pattern: str) -> None:
    write(builtin_dir, "board", complete(**overrides))
    with pytest.raises(BoardError, match=r"^boards/board\.json: field " + pattern):
        load("board")


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("{", r"invalid JSON at line 1 column 2"),
        ("[1, 2]", r"a profile must be a JSON object, got list"),
        ('{"cpu": "a", "cpu": "b"}', r"field 'cpu' appears more than once"),
    ],
)
def test_unreadable_files(tmp_path: Path, text: str, pattern: str) -> None:
    path = write(tmp_path, "board", text)
    with pytest.raises(BoardError, match=pattern) as err:
        load_file(path)
    assert str(err.value).startswith(str(path))


def test_custom_name_is_named_in_the_message(tmp_path: Path) -> None:
    path = write(tmp_path, "node", complete(name="node-7", ram_bytes="lots"))
    with pytest.raises(BoardError) as err:
        load_file(path)
    assert str(err.value) == (f"{path}: field 'ram_bytes' must be a positive integer, got \"lots\" (board 'node-7')")


def test_bad_name_field_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BoardError, match="field 'name' must be lowercase"):
        load_file(write(tmp_path, "board", complete(name="My Board")))
    with pytest.raises(BoardError, match="no such profile file"):
        load_file(tmp_path / "absent.json")


@pytest.mark.parametrize("name", ["nope", "_base", "_esp32-family", "../boards/esp32", "", "ESP32"])
def test_load_refuses_unknown_and_abstract_names(name: str) -> None:
    with pytest.raises(BoardError, match=r"^unknown board .*known boards: esp32, "):
        load(name)


# -- CLI -----------------------------------------------------------------------


def run_argparse(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="surge")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def _surge_main() -> Callable[[list[str]], Any] | None:
    try:
        module = importlib.import_module("agent.cli")
    except ModuleNotFoundError as exc:
        # Only "not written yet" skips; a broken import elsewhere must fail.
        if exc.name in ("agent", "agent.cli"):
            return None
        raise
    main = getattr(module, "main", None)
    return main if callable(main) else None


def run_surge(argv: list[str]) -> int:
    main = _surge_main()
    if main is None:
        pytest.skip("agent.cli.main is not there yet")
    try:
        code = main(argv)
    except SystemExit as exc:  # a main() may exit rather than return
        code = exc.code
    return int(code or 0)


RUNNERS = [pytest.param(run_argparse, id="argparse"), pytest.param(run_surge, id="surge-main")]


@pytest.mark.parametrize("run", RUNNERS)
def test_cli_list(run: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["boards", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "RUNTIME", "CPU", "RAM", "FLASH", "INTERVAL"]
    rows = {line.split()[0]: line for line in out[1:]}
    assert set(rows) == EXPECTED
    assert "520 KiB" in rows["esp32"] and "4 MiB" in rows["esp32"] and "300 s" in rows["esp32"]
    assert "1 GiB" in rows["rpi-4"] and "60 s" in rows["rpi-4"]


@pytest.mark.parametrize("run", RUNNERS)
def test_cli_show(run: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["boards", "show", "esp32"]) == 0
    out = capsys.readouterr().out
    assert "micropython" in out and "520 KiB (532480 bytes)" in out and "boards/esp32.json" in out
    assert run(["boards", "show", "rpi-5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == load("rpi-5").to_dict()


@pytest.mark.parametrize("run", RUNNERS)
def test_cli_errors_are_one_line_exit_2(
    run: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run(["boards", "show", "nope"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "unknown board 'nope'" in captured.err
    bad = write(tmp_path, "bad", complete(ram_bytes="lots"))
    assert run(["boards", "show", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "field 'ram_bytes' must be a positive integer" in err


def test_cli_show_user_file_list_json_and_bare_boards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "mine", {"inherits": "rpi-4", "net_interface": "end0"})
    assert run_argparse(["boards", "show", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["net_interface"] == "end0"
    assert run_argparse(["boards", "list", "--json"]) == 0
    assert [p["name"] for p in json.loads(capsys.readouterr().out)] == names()
    assert run_argparse(["boards"]) == 2
    assert "choose a command" in capsys.readouterr().err


def test_cli_module_runs_without_traceback() -> None:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "boards.cli", "boards", "show", "nope"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_human_bytes() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(520 * KIB) == "520 KiB"
    assert human_bytes(4 * MIB) == "4 MiB"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(2 * 1024**5) == "2 PiB"
