"""What both cluster launchers share: ports, node processes, bounded waits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable


class ClusterError(RuntimeError):
    """A node did not start, or the cluster did not form; the message says which and why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (held open together, so no two are the same)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log at %s)" % path
    return "\n".join(text[-lines:])


class NodeProcess:
    """One node's OS process, in a process group of its own so a SIGKILL takes its helpers too."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ClusterError(
                    "node %s exited with status %s before %s; its log ends:\n%s"
                    % (self.name, self.proc.returncode, what, log_tail(self.log))
                )
            if ready():
                return
            time.sleep(0.2)
        raise ClusterError(
            "node %s: no %s within %.0f s; its log ends:\n%s" % (self.name, what, timeout, log_tail(self.log))
        )

    def send(self, sig: int) -> None:
        """Send ``sig`` to the node's process group without waiting."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def signal(self, sig: int, timeout: float = 30.0) -> None:
        """Send ``sig`` to the node's process group and wait for the node to exit (SIGKILL after ``timeout``)."""
        self.send(sig)
        self.wait_exit(timeout)

    def wait_exit(self, timeout: float = 30.0) -> None:
        """Wait for the node to exit (SIGKILL after ``timeout``), then clear up what is left of its group."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        # Helpers left in the group (a killed leader's children) go too.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc = None
