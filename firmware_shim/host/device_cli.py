"""``surge flash`` and ``surge device ls|cat|rm|reset`` (host side, CPython).

Register with agent.cli's ``_COMMAND_MODULES`` as ``firmware_shim.host.device_cli``.
Until then ``python -m firmware_shim.host.device_cli ...`` runs the full
``surge`` command line with these commands added.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from agent.cli import CLIError
from firmware_shim.host import flash as flash_mod
from firmware_shim.host.serial_transport import SerialTransport
from firmware_shim.host.transport import ENOENT, DeviceError, TransportError, join, quote

MODULE = "firmware_shim.host.device_cli"


def _flash(args: argparse.Namespace) -> int:
    password = None
    if args.wifi_password_env:
        password = os.environ.get(args.wifi_password_env)
        if password is None:
            raise CLIError("environment variable %s is not set" % args.wifi_password_env)
    opts = flash_mod.FlashOptions(
        board=args.board, port=args.port, config=args.config, gateway_db=args.gateway_db,
        enroll_out=args.enroll_out, owner=args.owner or "", firmware=args.firmware, erase=args.erase,
        mpy=args.mpy, wait=args.wait, check_board=not args.no_board_check, baudrate=args.baud,
        wifi_ssid=args.wifi_ssid, wifi_password=password)
    try:
        res = flash_mod.flash(opts, sys.stderr)
    except (flash_mod.FlashError, TransportError) as exc:
        raise CLIError(str(exc)) from None
    c = res.copy
    print("flashed %s on %s: %d files, %d copied (%d of %d bytes) in %.1f s; %d bytes sent over the port"
          % (args.board, args.port, c.files_total, c.files_copied, c.bytes_copied, c.bytes_total, c.seconds,
             res.wire_bytes_sent))
    print("device id:  %s" % res.device_id)
    print("public key: %s" % res.public_key)
    acc = res.accepted
    if acc is None and args.wait > 0:
        print("the board connected and reported; acceptance not confirmed (no --gateway-db, and the broker "
              "is not reachable from this computer)")
    if acc is not None:
        print("first report accepted by the gateway: boot %s, seq %s (seen in the %s)" % (acc.boot, acc.seq, acc.via))
        if acc.synced is False:
            print("note: the board's clock is not synced, so its reports carry no time; it retries NTP each report")
    return 0


def _open(args: argparse.Namespace) -> SerialTransport:
    try:
        t = SerialTransport(args.port, args.baud)
        t.enter_raw_repl()
        return t
    except TransportError as exc:
        raise CLIError(str(exc)) from None


def _device_error(exc: DeviceError, path: str) -> CLIError:
    if exc.errno == ENOENT:
        return CLIError("no such file or directory on the device: %s" % path)
    return CLIError("%s: %s" % (path, exc.last_line))


def _ls(args: argparse.Namespace) -> int:
    t = _open(args)
    try:
        root = str(t.eval("__import__('os').getcwd()"))
        path = join(root, args.path) if args.path else root
        if args.recursive:
            rows = t.walk(path)
            if not rows and not t.exists(path):
                raise CLIError("no such file or directory on the device: %s" % args.path)
            for p, is_dir, size in rows:
                rel = p[len(path):].lstrip("/") if p.startswith(path) else p
                print("%9s  %s%s" % ("" if is_dir else size, rel, "/" if is_dir else ""))
        else:
            for e in sorted(t.listdir(path), key=lambda e: (not e.is_dir, e.name)):
                print("%9s  %s%s" % ("" if e.is_dir else e.size, e.name, "/" if e.is_dir else ""))
    except DeviceError as exc:
        raise _device_error(exc, args.path or "/") from None
    except TransportError as exc:
        raise CLIError(str(exc)) from None
    finally:
        t.close()
    return 0


# Decided on the device, so a key file's secret never crosses the line.
_IS_KEY = """\
_f = open(%s, 'rb')
_h = _f.read(400)
_f.close()
print('KEY' if (b'surge-ed25519' in _h and b'"secret"' in _h) else 'FILE')
del _f, _h
"""


def _cat(args: argparse.Namespace) -> int:
    t = _open(args)
    try:
        kind = t.exec(_IS_KEY % quote(args.path)).decode().strip()
        if kind == "KEY":
            raise CLIError("%s is the device's secret key: it never leaves the board "
                           "(`surge flash` prints its public key)" % args.path)
        data = t.read_file(args.path)
    except DeviceError as exc:
        raise _device_error(exc, args.path) from None
    except TransportError as exc:
        raise CLIError(str(exc)) from None
    finally:
        t.close()
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    return 0


def _rm(args: argparse.Namespace) -> int:
    t = _open(args)
    try:
        if not t.exists(args.path):
            raise CLIError("no such file or directory on the device: %s" % args.path)
        if args.recursive:
            t.rmtree(args.path)
        else:
            t.remove(args.path)
    except DeviceError as exc:
        if exc.errno in (21, 39, 1):  # EISDIR, ENOTEMPTY, EPERM: a directory
            raise CLIError("%s is a directory: use rm -r" % args.path) from None
        raise _device_error(exc, args.path) from None
    except TransportError as exc:
        raise CLIError(str(exc)) from None
    finally:
        t.close()
    print("removed %s" % args.path)
    return 0


def _reset(args: argparse.Namespace) -> int:
    t = _open(args)
    try:
        t.soft_reset()
        end = time.monotonic() + args.follow
        while time.monotonic() < end:
            line = t.readline(min(0.2, max(0.0, end - time.monotonic())))
            if line is not None:
                print(line.decode(errors="replace"), flush=True)
    except TransportError as exc:
        raise CLIError(str(exc)) from None
    except KeyboardInterrupt:
        pass
    finally:
        t.close()
    return 0


def add_parser(subparsers: Any) -> None:
    fl = subparsers.add_parser("flash", help="copy the agent to a MicroPython board, make its key, enroll it",
                               description="Build the bundle, copy it over the serial port (only changed "
                                           "files), create the device key on the board, enroll its public "
                                           "key and wait until the gateway accepts its first report.")
    fl.add_argument("--board", required=True, help="board profile (surge boards list)")
    fl.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0 or /dev/ttyACM0")
    fl.add_argument("--config", required=True, metavar="FILE", help="agent config (surge agent init)")
    where = fl.add_mutually_exclusive_group()
    where.add_argument("--gateway-db", metavar="FILE", help="enroll straight into this gateway database")
    where.add_argument("--enroll-out", metavar="FILE",
                       help="write (or add to) an enrollment file for `surge gateway enroll --from`")
    fl.add_argument("--owner", metavar="ADDR", help="owner's EVM address, recorded at enrollment (rewards are paid "
                    "to it; a label is kept but earns nothing)")
    fl.add_argument("--firmware", metavar="BIN", help="first write this MicroPython .bin with esptool (ESP32)")
    fl.add_argument("--erase", action="store_true", help="with --firmware: erase the whole flash first "
                                                         "(a new board; this also erases any device key)")
    fl.add_argument("--mpy", action="store_true", help="precompile modules with mpy-cross for the board's version")
    fl.add_argument("--wait", type=float, default=120.0, metavar="S",
                    help="seconds to wait for the first accepted report (0: reset and exit)")
    fl.add_argument("--no-board-check", action="store_true",
                    help="skip comparing the device's platform with the profile (emulators, custom boards)")
    fl.add_argument("--baud", type=int, default=115200, help=argparse.SUPPRESS)
    fl.add_argument("--wifi-ssid", metavar="SSID", help="Wi-Fi network written into the device config")
    fl.add_argument("--wifi-password-env", metavar="VAR",
                    help="take the Wi-Fi password from this environment variable (never from argv)")
    fl.set_defaults(func=_flash)

    dev = subparsers.add_parser("device", help="files on a MicroPython board, and reset")
    sub = dev.add_subparsers(dest="device_command", metavar="ACTION")

    def port(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--port", required=True, help="serial port")
        p.add_argument("--baud", type=int, default=115200, help=argparse.SUPPRESS)
        return p

    ls = port(sub.add_parser("ls", help="list a directory on the board"))
    ls.add_argument("path", nargs="?", default="", help="directory (default: the board's root)")
    ls.add_argument("-r", "--recursive", action="store_true")
    ls.set_defaults(func=_ls)
    cat = port(sub.add_parser("cat", help="print a file from the board (never the device key)"))
    cat.add_argument("path")
    cat.set_defaults(func=_cat)
    rm = port(sub.add_parser("rm", help="remove a file (or, with -r, a directory) on the board"))
    rm.add_argument("path")
    rm.add_argument("-r", "--recursive", action="store_true")
    rm.set_defaults(func=_rm)
    rs = port(sub.add_parser("reset", help="soft-reset the board and show what it prints"))
    rs.add_argument("--follow", type=float, default=5.0, metavar="S", help="seconds of output to show (default 5)")
    rs.set_defaults(func=_reset)


def main(argv: list[str] | None = None) -> int:
    """``surge`` with these commands present even if agent.cli does not list this module yet."""
    from agent import cli

    # The registry maps module -> (its commands, its pip extra); add to it in place.
    cli._COMMAND_MODULES.setdefault(MODULE, (("flash", "device"), "flash"))
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
