"""``surge boards list`` and ``surge boards show NAME``.

``add_parser`` plugs the commands into the ``surge`` CLI; every subcommand
sets ``func(args) -> int``.  Errors are one line on stderr and exit code 2,
never a traceback: a maker with a typo in a profile wants the file and the
field, not a stack.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from . import BoardError, BoardProfile, load, load_file, names

EXIT_ERROR = 2

_Command = Callable[[argparse.Namespace], int]

__all__ = ["EXIT_ERROR", "add_parser", "main"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    boards = subparsers.add_parser(
        "boards",
        help="list and inspect board profiles",
        description="Board profiles: what each supported board is and what it can honestly claim.",
    )
    boards.set_defaults(func=_missing_subcommand(boards))
    sub = boards.add_subparsers(dest="boards_command", metavar="COMMAND")

    list_p = sub.add_parser("list", help="table of the built-in boards")
    list_p.add_argument("--json", action="store_true", help="print every profile as a JSON array")
    list_p.set_defaults(func=_cmd_list)

    show_p = sub.add_parser("show", help="one board's resolved profile")
    show_p.add_argument("name", metavar="NAME", help="a built-in board name, or a path to a profile .json file")
    show_p.add_argument("--json", action="store_true", help="print the resolved profile as JSON")
    show_p.set_defaults(func=_cmd_show)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``python -m boards.cli``)."""
    parser = argparse.ArgumentParser(prog="surge")
    add_parser(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def _missing_subcommand(parser: argparse.ArgumentParser) -> _Command:
    def run(args: argparse.Namespace) -> int:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: choose a command: list, show", file=sys.stderr)
        return EXIT_ERROR

    return run


def _cmd_list(args: argparse.Namespace) -> int:
    try:
        profiles = [load(n) for n in names()]
    except BoardError as exc:
        return _fail(exc)
    if args.json:
        _emit([json.dumps([p.to_dict() for p in profiles], indent=2)])
        return 0
    header = ("NAME", "RUNTIME", "CPU", "RAM", "FLASH", "INTERVAL")
    rows = [header] + [
        (
            p.name,
            p.runtime,
            p.cpu,
            human_bytes(p.ram_bytes),
            human_bytes(p.flash_bytes) if p.flash_bytes else "-",
            f"{p.report_interval_s} s",
        )
        for p in profiles
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    _emit(["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows])
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    target: str = args.name
    try:
        # Anything that looks like a path is a user's own profile file.
        if target.endswith(".json") or "/" in target or "\\" in target:
            profile = load_file(target)
        else:
            profile = load(target)
    except BoardError as exc:
        return _fail(exc)
    if args.json:
        _emit([json.dumps(profile.to_dict(), indent=2)])
    else:
        _emit([f"{key:<24} {value}" for key, value in describe(profile)])
    return 0


def describe(p: BoardProfile) -> list[tuple[str, str]]:
    """Human-readable (field, value) rows; exact byte counts kept alongside."""

    def size(n: int) -> str:
        return f"{human_bytes(n)} ({n} bytes)" if n else "none"

    def rate(n: int) -> str:
        return f"{n} B/s ({n * 8 / 1e6:g} Mbit/s)"

    rows = [
        ("name", p.name),
        ("description", p.description),
        ("runtime", p.runtime),
        ("cpu", p.cpu),
        ("ram_bytes", size(p.ram_bytes)),
        ("psram_bytes", size(p.psram_bytes)),
        ("flash_bytes", size(p.flash_bytes)),
        ("heap_budget_bytes", size(p.heap_budget_bytes)),
        ("mounts", " ".join(p.mounts)),
        ("net_interface", p.net_interface),
        ("report_interval_s", f"{p.report_interval_s} s"),
        ("max_storage_bytes", size(p.max_storage_bytes)),
        ("max_bw_up_bytes_per_s", rate(p.max_bw_up_bytes_per_s)),
        ("max_bw_down_bytes_per_s", rate(p.max_bw_down_bytes_per_s)),
        ("modules", " ".join(p.modules)),
    ]
    if p.runtime == "micropython":
        rows.append(("mpy_arch", p.mpy_arch or "-"))
        rows.append(("micropython_board", p.micropython_board or "-"))
    if p.notes:
        rows.append(("notes", p.notes))
    rows.append(("source", p.source))
    return rows


def human_bytes(n: int) -> str:
    """Binary units; exact multiples print without a fraction (4 MiB, 520 KiB)."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    value = float(n)
    for i, unit in enumerate(units):
        if value < 1024 or i == len(units) - 1:
            if n % (1024**i) == 0:
                return f"{n // 1024**i} {unit}"
            return f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _emit(lines: Sequence[str]) -> None:
    try:
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()
    except BrokenPipeError:
        # `surge boards list | head` closed the pipe early: not an error.
        # Point stdout at devnull so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _fail(exc: BoardError) -> int:
    # One line, whatever the message: scripts grep stderr.
    print("surge boards: error: " + " ".join(str(exc).splitlines()), file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
