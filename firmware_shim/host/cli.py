"""``surge firmware build`` (host side)."""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli import CLIError
from firmware_shim.host import bundle


def _build(args: argparse.Namespace) -> int:
    try:
        b = bundle.build(args.board, args.config, args.out, args.mpy, args.with_key)
    except bundle.BundleError as exc:
        raise CLIError(str(exc)) from None
    print("bundle for %s written to %s (%d files, %d bytes, %s)" % (
        args.board, b.out, len(b.files), bundle.python_files_size(b), ".mpy" if b.mpy else ".py"))
    if b.key_included:
        print("device key: included (%s)" % ("from --with-key" if args.with_key else "kept from earlier"))
    else:
        print("device key: none; the board generates one at first start and prints its public key")
    print("try it on the unix port: micropython %s/main.py" % b.out)
    return 0


def add_parser(subparsers: Any) -> None:
    fw = subparsers.add_parser("firmware", help="MicroPython bundles for boards")
    sub = fw.add_subparsers(dest="firmware_command", metavar="ACTION")
    b = sub.add_parser("build", help="write the device bundle for a board")
    b.add_argument("--board", required=True, help="board profile name (surge boards list)")
    b.add_argument("--config", required=True, metavar="FILE", help="agent config (surge agent init)")
    b.add_argument("--out", required=True, metavar="DIR", help="bundle directory")
    b.add_argument("--mpy", action="store_true", help="precompile modules with mpy-cross")
    b.add_argument("--with-key", metavar="FILE",
                   help="copy this host-side key into the bundle (tests and demos only: "
                        "normally the board makes its own key)")
    b.set_defaults(func=_build)
