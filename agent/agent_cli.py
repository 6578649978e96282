"""``surge agent init`` and ``surge agent run`` (host side, CPython)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from agent import config as agent_config
from agent import keyfile
from agent.cli import CLIError


def _log(msg: str) -> None:
    print("surge-agent: " + msg, file=sys.stderr, flush=True)


def _init(args: argparse.Namespace) -> int:
    import boards

    profile = boards.load(args.board)
    out = Path(args.out)
    key_path = out.with_suffix(".key")
    doc: dict[str, Any] = {
        "version": 1,
        "board": profile.name,
        "fleet": args.fleet,
        "broker": {
            "url": args.broker,
            "username": args.username,
            "password": None,
            "tls": args.broker.startswith("mqtts://"),
            "ca_file": None,
            "keepalive": 60,
        },
        "interval": profile.report_interval_s,
        "mounts": list(profile.mounts),
        "net_interface": profile.net_interface,
        "outbox": {"dir": out.stem + "-outbox", "max_entries": 500},
        "state_dir": out.stem + "-state",
        "key_file": key_path.name,
        "bw_probe_bytes": 4096,
        "reconnect": {"min_s": 1, "max_s": 60},
    }
    if profile.runtime == "micropython":
        doc["wifi"] = {"ssid": args.wifi_ssid, "password": None}
    if args.password_env:
        doc["broker"]["password"] = os.environ.get(args.password_env)
        if doc["broker"]["password"] is None:
            raise CLIError("environment variable %s is not set" % args.password_env)
    try:
        agent_config.parse(doc, str(out))
    except agent_config.ConfigError as exc:
        raise CLIError(str(exc)) from None
    for p in (out, key_path):
        if p.exists():
            raise CLIError("%s already exists; refusing to overwrite it" % p)
    out.parent.mkdir(parents=True, exist_ok=True)
    key = keyfile.generate()
    keyfile.write(str(key_path), key)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it may hold a password
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(doc, indent=2) + "\n")
    print("config written to %s (board %s, fleet %s)" % (out, profile.name, args.fleet))
    print("device id:  %s" % key.device_id)
    print("public key: %s" % key.public.hex())
    print("device key written to %s (mode 0600)" % key_path)
    if profile.runtime == "micropython":
        print(
            "note: `surge firmware build` leaves this key out of the bundle; the board "
            "generates its own at first start (--with-key uses this one instead)"
        )
    else:
        print("next: surge agent run --config %s" % out)
    return 0


def _run(args: argparse.Namespace) -> int:
    from agent import report
    from agent.link_paho import Link
    from agent.runner import Agent

    try:
        cfg = agent_config.load(args.config)
    except agent_config.ConfigError as exc:
        raise CLIError(str(exc)) from None
    key = keyfile.load(cfg.path("key_file"))
    link = Link(
        "surge-" + report.device_id(key.public),
        cfg.get("broker.host"),
        cfg.get("broker.port"),
        cfg.get("broker.username") or key.device_id,
        cfg.get("broker.password"),
        cfg.get("broker.keepalive"),
        cfg.get("broker.tls"),
        cfg.path("broker.ca_file"),
    )
    try:
        agent = Agent(cfg, key.secret, key.public, link, "cpython", _log)
    except OSError as exc:
        raise CLIError("cannot open outbox or state: %s" % exc) from None

    def _term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    count = args.count if args.count is not None else cfg.get("count")
    try:
        agent.run(count)
    except KeyboardInterrupt:
        agent.stop()
        return 130
    return 0


def add_parser(subparsers: Any) -> None:
    ag = subparsers.add_parser("agent", help="run the device agent on this machine")
    sub = ag.add_subparsers(dest="agent_command", metavar="ACTION")
    init = sub.add_parser("init", help="write an agent config and a new device key")
    init.add_argument("--board", required=True, help="board profile (surge boards list)")
    init.add_argument("--broker", required=True, metavar="URL", help="mqtt://host:1883 or mqtts://host:8883")
    init.add_argument("--fleet", required=True, metavar="NAME")
    init.add_argument("--out", required=True, metavar="FILE", help="config file to write (JSON)")
    init.add_argument("--username", help="MQTT user name")
    init.add_argument(
        "--password-env", metavar="VAR", help="take the MQTT password from this environment variable (never from argv)"
    )
    init.add_argument("--wifi-ssid", help="Wi-Fi network for boards (password: edit the config)")
    init.set_defaults(func=_init)
    run = sub.add_parser("run", help="measure and report")
    run.add_argument("--config", required=True, metavar="FILE")
    run.add_argument(
        "--count", type=int, metavar="N", help="make N reports, exit once all are acknowledged (default: forever)"
    )
    run.set_defaults(func=_run)
