"""Simulated devices for the demo: real agents whose probes are simulated.

Each simulated device is its own process running the real CPython agent
(``surge agent run``: report building, Ed25519 signing, outbox, state file,
paho link, birth, status and commands).  Only what a laptop cannot be is
simulated: the storage, network counters and link quality of the board named
in the device's config, and a ceiling on its upload bandwidth.  The
bandwidth probe itself is real: its chunks go to the gateway, which times
them (gateway/probe_check.py) and attests what it measured, and the device
claims the lower of its own measurement and its simulated uplink.  Storage
challenges are answered by the real agent from a real plot file.  Figures are drawn within that
board's profile (its plausibility ceilings are what the gateway checks) and
are deterministic per device id: the same key always describes the same
machine; only the per-report jitter moves.

``python -m gateway.demo.sim CONFIG`` runs one simulated device until SIGTERM
(or until its parent, the demo, is gone).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import boards
from boards import BoardProfile

GB = 1_000_000_000
MB = 1_000_000
# Storage a board of each kind plausibly has (marketing sizes, decimal).
_CARD_SIZES = (8 * GB, 16 * GB, 32 * GB, 64 * GB, 128 * GB)
_HOST_SIZES = (32 * GB, 64 * GB, 128 * GB, 256 * GB, 500 * GB, 1000 * GB, 2000 * GB, 4000 * GB, 8000 * GB)
# Home and office uplinks, bytes/s (10, 20, 40, 100, 200, 500 Mbit/s).
_UPLINKS = (1_250_000, 2_500_000, 5_000_000, 12_500_000, 25_000_000, 62_500_000)
# What MicroPython's firmware and the agent leave of a board's flash for files.
_FIRMWARE_BYTES = 1_572_864


@dataclass(frozen=True)
class SimProfile:
    """The simulated hardware of one device."""

    board: str
    runtime: str
    wifi: bool
    storage_total: int
    storage_free: int
    bw_up: int
    rssi: int | None
    link_mbps: int | None
    net_rx_rate: int  # bytes/s the simulated machine receives on average
    net_tx_rate: int

    def caps(self) -> list[str]:
        # What probes.caps() says on such a board (the birth's caps claim).
        return ["storage", "rssi", "bw"] if self.runtime == "micropython" else ["storage", "net", "link", "bw"]


def is_wifi(profile: BoardProfile) -> bool:
    return profile.net_interface == "sta" or profile.net_interface.startswith("wl")


def _rng(device_id: str, purpose: str) -> random.Random:
    seed = hashlib.sha256(("%s/%s" % (device_id, purpose)).encode()).digest()[:8]
    return random.Random(int.from_bytes(seed, "big"))


def plan(board: str, device_id: str) -> SimProfile:
    """The simulated hardware of ``device_id`` as a ``board``: same id, same figures."""
    p = boards.load(board)
    r = _rng(device_id, "profile")
    wifi = is_wifi(p)
    if p.runtime == "micropython":
        # Half the boards have only their flash, half an SD card as well.
        fs = max(64 * 1024, p.flash_bytes - _FIRMWARE_BYTES)
        total = fs if r.random() < 0.5 else fs + r.choice(_CARD_SIZES)
        up = int(p.max_bw_up_bytes_per_s * r.uniform(0.05, 0.5))
    else:
        total = r.choice([s for s in _HOST_SIZES if s <= p.max_storage_bytes])
        up = r.choice([u for u in _UPLINKS if u <= p.max_bw_up_bytes_per_s * 0.9] or [p.max_bw_up_bytes_per_s // 2])
    total = min(total, p.max_storage_bytes)
    free = int(total * r.uniform(0.15, 0.9))
    rssi = r.randint(-82, -42) if wifi else None
    mbps = None if wifi else r.choice((100, 1000, 1000, 1000))
    rx = int(up * r.uniform(0.01, 0.2))
    return SimProfile(
        board=p.name,
        runtime=p.runtime,
        wifi=wifi,
        storage_total=total,
        storage_free=free,
        bw_up=up,
        rssi=rssi,
        link_mbps=mbps,
        net_rx_rate=rx,
        net_tx_rate=int(rx * r.uniform(0.2, 1.5)),
    )


class SimulatedProbes:
    """Drop-in replacements for agent.probes' measurements and agent.bwprobe.run.

    Same signatures and return shapes as the real ones, so the agent's report
    path runs unchanged; figures jitter around the device's profile and never
    leave the board's plausibility limits.
    """

    def __init__(self, profile: SimProfile, device_id: str) -> None:
        self.p = profile
        self.board = boards.load(profile.board)
        self.r = _rng(device_id, "jitter")
        self.free = profile.storage_free
        self.started = time.monotonic()
        self.rx0 = self.r.randrange(10 * MB, 10 * GB)
        self.tx0 = self.r.randrange(10 * MB, 10 * GB)
        self.real_bw: Any = None  # agent.bwprobe.run, once install() has replaced it

    def storage(self, mounts: Any, errors: dict[str, str]) -> tuple[int, int]:
        # Free space wanders by up to 0.1 % of the disk per report.
        step = int(self.p.storage_total * self.r.uniform(-0.001, 0.001))
        self.free = max(0, min(self.p.storage_total, self.free + step))
        return self.p.storage_total, self.free

    def net(self, iface: Any, errors: dict[str, str]) -> tuple[int, int] | None:
        if self.board.runtime == "micropython":
            errors["net"] = "firmware has no byte counters"  # what the real probe says on a board
            return None
        t = time.monotonic() - self.started
        return self.rx0 + int(self.p.net_rx_rate * t), self.tx0 + int(self.p.net_tx_rate * t)

    def link(self, iface: Any, errors: dict[str, str]) -> tuple[int | None, int | None]:
        if self.p.rssi is not None:
            return max(-95, min(-30, self.p.rssi + self.r.randint(-3, 3))), None
        return None, self.p.link_mbps

    def bw_run(self, link: Any, topic: str, seq: int, total: int) -> int:
        # A simulated board's uplink is slower than loopback: claim at most
        # that (capped at the profile), and never more than the real probe
        # run just measured, so the claim stays honest beside what the
        # gateway timed from the same chunks.  Without the real probe (not
        # installed) the figure is the simulated one alone.
        rate = max(1, min(int(self.p.bw_up * self.r.uniform(0.85, 1.15)), self.board.max_bw_up_bytes_per_s))
        if self.real_bw is None:
            return rate
        return max(1, min(rate, int(self.real_bw(link, topic, seq, total))))

    def caps(self) -> list[str]:
        return self.p.caps()

    def install(self) -> None:
        """Replace the probe functions in this process (a simulated device runs nothing else)."""
        from agent import bwprobe, probes

        setattr(probes, "storage", self.storage)
        setattr(probes, "net", self.net)
        setattr(probes, "link", self.link)
        setattr(probes, "caps", self.caps)
        self.real_bw = bwprobe.run
        setattr(bwprobe, "run", self.bw_run)


def _exit_with_parent() -> None:
    # Orphaned by a killed demo: stop the agent the clean way (offline status).
    parent = os.getppid()
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m gateway.demo.sim CONFIG", file=sys.stderr)
        return 2
    from agent import config as agent_config
    from agent import keyfile, report
    from agent.cli import main as surge

    cfg = agent_config.load(args[0])
    device_id = report.device_id(keyfile.load_public(cfg.path("key_file")))
    SimulatedProbes(plan(cfg.get("board"), device_id), device_id).install()
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    return surge(["agent", "run", "--config", args[0]])


if __name__ == "__main__":
    sys.exit(main())
