"""The demo's MQTT broker: Mosquitto when installed, else the embedded amqtt.

Either way it is a real broker over TCP on a free 127.0.0.1 port, run as a
child process in its own session (Ctrl-C in the terminal reaches only the
demo, which stops the broker last, after the gateway has drained).

amqtt speaks MQTT 3.1.1 only, so a gateway in front of it must too; the
``mqtt_version`` of each broker says which protocol the gateway should use.

``python -m gateway.demo.broker PORT`` serves amqtt on 127.0.0.1:PORT until
SIGTERM: that is how the embedded broker runs, in its own interpreter, so
its event loop does not compete with the gateway for the demo's GIL.
"""

from __future__ import annotations

import abc

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

START_TIMEOUT_S = 15.0


class BrokerError(Exception):
    """The broker could not be started; the message says why, in one line."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the demo, the tests and the bench all take theirs here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def mosquitto_binary() -> str | None:
    # Debian installs it in /usr/sbin, which is not on an ordinary user's PATH.
    found = shutil.which("mosquitto")
    if found is None and os.path.exists("/usr/sbin/mosquitto"):
        found = "/usr/sbin/mosquitto"
    return found


def amqtt_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("amqtt") is not None


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class Broker:
    """A broker the demo connects to; ``stop`` ends it if the demo started it."""

    kind = "external"
    mqtt_version = "5"

    def __init__(self, url: str) -> None:
        self.url = url

    def describe(self) -> str:
        return "%s %s" % (self.kind, self.url)

    def stop(self) -> None:
        """An external broker is not ours to stop."""


class _ChildBroker(Broker, abc.ABC):
    """A broker process on a free loopback port, logging into ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        super().__init__("mqtt://127.0.0.1:%d" % self.port)
        self.workdir = workdir
        self.log = workdir / "broker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The argv that starts this broker (Mosquitto or amqtt)."""

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log, "ab")
        # Own session: the terminal's Ctrl-C goes to the demo only, which
        # stops the broker after agents and gateway are done with it.
        self.proc = subprocess.Popen(
            self.command(),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                self.stop()
                raise BrokerError("%s exited at start (%s); see %s" % (self.kind, tail[0][:200], self.log))
            if _listening(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerError(
            "%s did not listen on 127.0.0.1:%d within %.0f s; see %s"
            % (self.kind, self.port, START_TIMEOUT_S, self.log)
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class MosquittoBroker(_ChildBroker):
    kind = "mosquitto"

    def __init__(self, workdir: Path, binary: str) -> None:
        super().__init__(workdir)
        self.binary = binary
        self.conf = workdir / "mosquitto.conf"

    def command(self) -> list[str]:
        # Its own config, never the system's: anonymous on loopback only, and
        # persistence so the gateway's session survives like in production.
        self.conf.write_text(
            "listener %d 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            "persistence_location %s/\n"
            "max_queued_messages 100000\n"
            "log_dest stdout\n" % (self.port, self.workdir.resolve())
        )
        return [self.binary, "-c", str(self.conf.resolve())]


class EmbeddedBroker(_ChildBroker):
    """amqtt (pure Python, from PyPI) for machines without Mosquitto."""

    kind = "amqtt"
    mqtt_version = "3.1.1"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gateway.demo.broker", str(self.port)]


def start_broker(workdir: Path, url: str | None, embedded: bool) -> Broker:
    """The broker at ``url``; else Mosquitto if installed (and not ``embedded``); else amqtt."""
    if url is not None:
        from gateway.config import ConfigError, parse_broker

        try:
            host, port, _ = parse_broker(url)
            # Fail in a second with the reason, not after the gateway's subscribe timeout.
            socket.create_connection((host, port), timeout=5).close()
        except ConfigError as exc:
            raise BrokerError("--broker: %s" % exc) from None
        except OSError as exc:
            raise BrokerError("cannot reach the broker at %s: %s" % (url, exc.strerror or exc)) from None
        return Broker(url)
    binary = None if embedded else mosquitto_binary()
    child: _ChildBroker
    if binary is not None:
        child = MosquittoBroker(workdir, binary)
    elif amqtt_available():
        child = EmbeddedBroker(workdir)
    else:
        raise BrokerError(
            "no MQTT broker: install Mosquitto (apt-get install mosquitto) or the embedded one "
            "(pip install 'depin-surge[demo]'), or give --broker URL"
        )
    child.start()
    return child


# -- the embedded broker process -------------------------------------------


def amqtt_config(port: int) -> dict[str, object]:
    # No $SYS or packet-logging plugins: they cost CPU the demo's gateway needs.
    return {
        "listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:%d" % port}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def serve(port: int) -> None:
    from amqtt.broker import Broker as AmqttBroker  # type: ignore[import-untyped]

    broker = AmqttBroker(amqtt_config(port))
    await broker.start()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m gateway.demo.broker PORT", file=sys.stderr)
        return 2
    asyncio.run(serve(int(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
