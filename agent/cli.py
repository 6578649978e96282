"""The ``surge`` command line (CPython only).

Each stage adds its own sub-commands through an ``add_parser(subparsers)``
function; every handler returns an exit code.  Expected failures raise
``CLIError`` (or a module's own error type listed in ``_USER_ERRORS``) and end
as one line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any, Callable, Sequence

from agent import VERSION
from surge_protocol import claims as C
from agent import keyfile


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


# Modules that contribute sub-commands; optional ones may be missing from a
# slim agent install (no gateway extra), and then their commands are absent.
# module -> (the commands it adds, the pip extra its third-party imports come from)
_COMMAND_MODULES = {
    "boards.cli": (("boards",), None),
    "agent.agent_cli": (("agent",), None),
    "gateway.cli": (("gateway", "proof", "verify"), "gateway"),
    "firmware_shim.host.cli": (("firmware",), "flash"),
    "firmware_shim.host.device_cli": (("flash", "device"), "flash"),
    "gateway.demo.cli": (("demo",), "demo"),
    "gateway.rewards.cli": (("rewards",), "gateway"),
}
_OWN_PACKAGES = ("agent", "boards", "firmware_shim", "gateway")


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [CLIError, keyfile.KeyFileError]
    for mod, name in (("boards", "BoardError"), ("firmware_shim.cose", "COSEError")):
        try:
            errors.append(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _keys_generate(args: argparse.Namespace) -> int:
    key = keyfile.generate()
    keyfile.write(args.out, key)
    print("device id:  %s" % key.device_id)
    print("public key: %s" % key.public.hex())
    print("secret key written to %s (mode 0600)" % args.out)
    return 0


def _keys_show(args: argparse.Namespace) -> int:
    public = keyfile.load_public(args.file)
    print(json.dumps({"device_id": C.device_id(public), "public_key": public.hex()}, indent=2))
    return 0


def _read_input(path: str) -> bytes:
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as exc:
        raise CLIError("cannot read %s: %s" % (path, exc.strerror)) from None
    text = data.strip()
    # Reports copied from logs or mosquitto_sub -F %x arrive as hex text.
    if text and all(c in b"0123456789abcdefABCDEF" for c in text) and len(text) % 2 == 0:
        return bytes.fromhex(text.decode())
    return data


def decode_report(data: bytes, pubkey: bytes | None) -> dict[str, Any]:
    """Everything ``surge decode`` prints, as a JSON-ready dict."""
    from firmware_shim import cbor, cose

    msg = cose.parse_sign1(data)
    try:
        claims = cbor.loads(msg.payload)
    except cbor.CBORError as exc:
        raise CLIError("payload is not valid CBOR: %s" % exc) from None
    if not isinstance(claims, dict):
        raise CLIError("payload is not a claims map")
    kid = msg.kid
    out: dict[str, Any] = {
        "size": len(data),
        "header": {
            "protected": {
                "alg": "EdDSA" if msg.header.get(cose.ALG) == cose.EDDSA else msg.header.get(cose.ALG),
                "kid": msg.header[cose.KID].hex() if isinstance(msg.header.get(cose.KID), bytes) else None,
            },
            "unprotected": {str(k): v.hex() if isinstance(v, bytes) else v for k, v in msg.unprotected.items()},
        },
        "device": kid.hex() if isinstance(kid, bytes) else None,
        "claims": C.named(claims),
    }
    if pubkey is None:
        out["signature"] = {"valid": None, "reason": "not checked: pass --pubkey HEX"}
    else:
        valid = cose.verify_sign1(msg, pubkey)
        reason = "ok"
        if not valid:
            reason = "signature does not verify under this public key"
        elif isinstance(kid, bytes) and kid != C.kid(pubkey):
            valid, reason = (
                False,
                "kid %s does not belong to this public key (device %s)" % (kid.hex(), C.device_id(pubkey)),
            )
        out["signature"] = {"valid": valid, "reason": reason}
    return out


def _decode(args: argparse.Namespace) -> int:
    pubkey = None
    if args.pubkey is not None:
        try:
            pubkey = bytes.fromhex(args.pubkey)
        except ValueError:
            raise CLIError("--pubkey must be 64 hex characters") from None
        if len(pubkey) != 32:
            raise CLIError("--pubkey must be 32 bytes (64 hex characters), got %d bytes" % len(pubkey))
    result = decode_report(_read_input(args.file), pubkey)
    print(json.dumps(result, indent=2))
    return 0 if result["signature"]["valid"] is not False else 1


def _needs_extra(command: str, extra: str, missing: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise CLIError(
            "`surge %s` needs the %r extra (Python package %r is missing): "
            "pip install 'depin-surge[%s]'" % (command, extra, missing, extra)
        )

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="surge", description="Surge edge attestation")
    parser.add_argument("--version", action="version", version="surge " + VERSION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    keys = sub.add_parser("keys", help="device keys").add_subparsers(dest="keys_command", metavar="ACTION")
    gen = keys.add_parser("generate", help="create a new device key file (mode 0600)")
    gen.add_argument("--out", required=True, metavar="FILE")
    gen.set_defaults(func=_keys_generate)
    show = keys.add_parser("show", help="print a key file's device id and public key")
    show.add_argument("file", metavar="FILE")
    show.set_defaults(func=_keys_show)

    dec = sub.add_parser("decode", help="decode a report and check its signature")
    dec.add_argument("file", nargs="?", default="-", metavar="FILE", help="report bytes or hex; - for stdin")
    dec.add_argument("--pubkey", metavar="HEX", help="device public key to verify the signature")
    dec.set_defaults(func=_decode)

    for name, (commands, extra) in _COMMAND_MODULES.items():
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:
            missing = (exc.name or "").split(".")[0]
            if not missing or missing in _OWN_PACKAGES:
                raise
            # A slim install (a Pi agent without the gateway extra): the commands
            # still exist and say what to install instead of "invalid choice".
            for command in commands:
                stub = sub.add_parser(command, help="(needs: pip install 'depin-surge[%s]')" % extra)
                stub.add_argument("rest", nargs=argparse.REMAINDER)
                stub.set_defaults(func=_needs_extra(command, extra or "", missing))
            continue
        add: Callable[[Any], None] = mod.add_parser
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        code: int = func(args)
        return code
    except _user_errors() as exc:
        print("surge: error: %s" % exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `surge ... | head` closed the pipe: not an error worth a traceback.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    # Run the importable module, not this __main__ copy, so that CLIError
    # raised by other modules (which import agent.cli) is the class caught here.
    from agent.cli import main as _main

    sys.exit(_main())
