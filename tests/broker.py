"""A real Mosquitto broker per test, on a free loopback port.

Tests configure it, stop it (to simulate an outage) and start it again on the
same port, so agents and gateways see a real broker going away and coming back.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from gateway.demo import broker as demo_broker
from gateway.demo.broker import free_port

__all__ = ["Mosquitto", "free_port", "mosquitto_binary"]


def mosquitto_binary() -> str:
    found = demo_broker.mosquitto_binary()
    if found is None:
        raise RuntimeError("mosquitto not installed: `make test` installs the Debian package")
    return found


class Mosquitto:
    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = "", nodelay: bool = True) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.extra_conf = extra_conf
        # As docs/operators.md configures the broker (and `surge gateway acl` writes it):
        # no Nagle delay on its writes, which the gateway's probe timing depends on.
        self.nodelay = nodelay
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return "mqtt://127.0.0.1:%d" % self.port

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Run as root, Mosquitto drops to the `mosquitto` user, which cannot write
        # its persistence file into the test's directory: stay root then.
        # autosave_interval 1: sessions and queued messages reach the disk within a
        # second, so a broker killed with SIGKILL comes back with them (the default,
        # 30 minutes, persists only on a clean shutdown).
        user = "user root\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
        self.conf.write_text(
            "%s"
            "listener %d 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            "persistence_location %s/\n"
            "autosave_interval 1\n"
            "max_queued_messages 100000\n"
            "log_dest file %s\n"
            "%s"
            "%s\n"
            % (
                user,
                self.port,
                self.workdir,
                self.log,
                "set_tcp_nodelay true\n" if self.nodelay else "",
                self.extra_conf,
            )
        )
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mosquitto exited: %s" % self.log.read_text() if self.log.exists() else "")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen on port %d" % self.port)

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
