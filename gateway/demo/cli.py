"""``surge demo``: a broker, a gateway and a small fleet, watched live, ending in a verified proof."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

MODULE = "gateway.demo.cli"
EMBEDDED_ENV = "SURGE_DEMO_EMBEDDED_BROKER"


def _positive(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _demo(args: argparse.Namespace) -> int:
    import os

    from gateway.demo.run import Options, run_demo

    opts = Options(
        devices=args.devices,
        duration=args.duration,
        broker=args.broker,
        chain=args.chain,
        workdir=Path(args.workdir),
        embedded_broker=args.embedded_broker or os.environ.get(EMBEDDED_ENV, "") not in ("", "0"),
        micropython=not args.no_micropython,
        hass=args.hass,
        interval=args.interval,
        live=False if args.plain else None,
    )
    return run_demo(opts, sys.stdout)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run a broker, a gateway and a small fleet on this machine; end with a verified proof",
        description="Starts an MQTT broker (Mosquitto if installed, else the embedded amqtt), a gateway on an "
        "in-process EVM, simulated CPython agents on a mix of boards and one agent on the "
        "MicroPython unix port; shows them live; at the end exports one proof bundle and verifies it.",
    )
    p.add_argument("--devices", type=int, default=12, metavar="N", help="simulated CPython devices (default 12)")
    p.add_argument(
        "--duration",
        type=_positive,
        default=60.0,
        metavar="S",
        help="seconds to run once every device has reported (default 60; 0 = until Ctrl-C)",
    )
    p.add_argument("--broker", metavar="URL", help="use this broker (mqtt://host:port) instead of starting one")
    p.add_argument(
        "--chain",
        default="memory",
        metavar="URL",
        help="JSON-RPC endpoint instead of the in-process EVM (key in $SURGE_CHAIN_KEY)",
    )
    p.add_argument(
        "--workdir",
        default="surge-demo",
        metavar="DIR",
        help="keys, configs, database, logs and the proof (default ./surge-demo, cleared each run)",
    )
    p.add_argument(
        "--embedded-broker",
        action="store_true",
        help="use the embedded amqtt broker even if Mosquitto is installed (or set %s=1)" % EMBEDDED_ENV,
    )
    p.add_argument(
        "--interval", type=float, default=2.0, metavar="S", help="seconds between a device's reports (default 2)"
    )
    p.add_argument(
        "--hass", action="store_true", help="simulated agents also publish Home Assistant discovery (docs/makers.md)"
    )
    p.add_argument("--no-micropython", action="store_true", help="leave out the MicroPython agent")
    p.add_argument("--plain", action="store_true", help="plain progress lines instead of the live table")
    p.set_defaults(func=_demo)


def main(argv: list[str] | None = None) -> int:
    """``surge`` with ``demo`` present even if agent.cli does not list this module yet."""
    from agent import cli

    # The registry maps module -> (its commands, its pip extra); add to it in place.
    cli._COMMAND_MODULES.setdefault(MODULE, (("demo",), "demo"))
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
