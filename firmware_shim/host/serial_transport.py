"""The raw REPL over a serial port (pyserial): how the host runs code on a board.

Protocol, as MicroPython implements it (every control byte sent is marked
where it is written below):

* Ctrl-C (0x03) interrupts whatever runs; Ctrl-A (0x01) switches the REPL to
  raw mode, which answers ``raw REPL; CTRL-B to exit\\r\\n>`` and from then
  on does not echo.  Ctrl-B (0x02) goes back to the friendly REPL.
* Plain raw REPL: the host sends the code, then Ctrl-D (0x04); the device
  answers ``OK``, runs the code, and sends its stdout, 0x04, its stderr
  (the traceback, if any), 0x04, and the prompt ``>``.  There is no flow
  control, so the host paces its writes (the device's input buffer may be
  as small as 256 bytes).
* Raw-paste mode (MicroPython 1.14+): the host sends Ctrl-E (0x05), ``A``,
  0x01.  ``R\\x01`` means yes, followed by a 16-bit little-endian window
  size W: the host may send W bytes, and each 0x01 from the device grants W
  more (flow control, so no pacing and no overrun).  0x04 from the device
  means it stopped reading early (the host answers 0x04).  The host ends
  the code with 0x04, the device acknowledges with 0x04, then output
  follows as in the plain mode.  ``R\\x00`` means the firmware knows
  raw-paste but has it disabled; an old firmware treats the three bytes as
  input and re-prints its raw REPL banner: both fall back to plain mode.
* Ctrl-D at the *friendly* REPL soft-resets the board, which then runs
  boot.py and main.py.  (Ctrl-D at an empty raw REPL also soft-resets but
  stays in raw mode and skips main.py, which is what a flasher needs before
  copying, not after.)

The port is opened exclusively (flock): two programs writing to one REPL
corrupt each other's commands, so a second one gets a clear "port busy".
"""

from __future__ import annotations

import errno
import grp
import os
import struct
import time
from pathlib import Path

import serial  # type: ignore[import-untyped]
import serial.tools.list_ports  # type: ignore[import-untyped]

from firmware_shim.host.transport import Transport, TransportError

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
# Plain raw REPL: bytes per write and the pause between writes.
_PLAIN_CHUNK = 256
_PLAIN_PAUSE_S = 0.01

RESET_HINT = ("press the board's reset button (EN or RST; on a Pico W unplug and replug it), "
              "then retry; if it still does not answer, its main.py may be blocking the REPL: "
              "reflash MicroPython")


class PortError(TransportError):
    """The serial port cannot be used: missing, busy, or not permitted."""


class NotMicroPythonError(TransportError):
    """Something answers on the port, but it is not a MicroPython REPL."""


class NoReplError(TransportError):
    """Nothing answers on the port."""


def port_holders(port: str) -> list[str]:
    """'pid (name)' of other processes that have ``port`` open (Linux /proc)."""
    try:
        target = os.path.realpath(port)
        procs = Path("/proc").iterdir()
    except OSError:
        return []
    me = os.getpid()
    found = []
    for proc in procs:
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    name = (proc / "comm").read_text().strip()
                    found.append("%s (%s)" % (proc.name, name))
                    break
            except OSError:
                continue
    return found


def _serial_group(port: str) -> str:
    """The group that may open serial ports here, for the permission hint."""
    try:
        name = grp.getgrgid(os.stat(port).st_gid).gr_name
    except (OSError, KeyError):
        name = ""
    if name and name != "root":
        return "'%s'" % name
    return "'dialout' (Debian, Ubuntu, Raspberry Pi OS) or 'uucp' (Arch, Fedora)"


def _available_ports() -> str:
    ports = sorted(p.device for p in serial.tools.list_ports.comports())
    if ports:
        return "ports present: %s" % ", ".join(ports)
    return "no serial ports found: is the board plugged in (with a data cable, not a charge-only one)?"


def open_port(port: str, baudrate: int = 115200) -> serial.Serial:
    """Open ``port`` exclusively; every failure becomes a one-line PortError."""
    is_url = "://" in port
    if not is_url and not os.path.exists(port):
        raise PortError("no such port %s; %s" % (port, _available_ports()))
    try:
        # timeout: reads return after 50 ms without data, so loops can check deadlines.
        # exclusive: flock, so two flashers never interleave commands on one REPL.
        return serial.serial_for_url(port, baudrate=baudrate, timeout=0.05, write_timeout=10,
                                     exclusive=True)
    except serial.SerialException as exc:
        code = exc.errno if isinstance(exc.errno, int) else None
        text = str(exc)
        if "exclusively lock" in text or code in (errno.EBUSY, errno.EAGAIN):
            holders = port_holders(port)
            who = " by %s" % ", ".join(holders) if holders else ""
            raise PortError("port %s is busy: it is held%s (a serial monitor, mpremote, Thonny or "
                            "another surge?); close that program and retry" % (port, who)) from None
        if code in (errno.EACCES, errno.EPERM):
            raise PortError("permission denied on %s: join the group %s with `sudo usermod -aG GROUP "
                            "$USER`, then log out and back in" % (port, _serial_group(port))) from None
        if code == errno.ENOENT:
            raise PortError("no such port %s; %s" % (port, _available_ports())) from None
        raise PortError("cannot open %s: %s" % (port, text)) from None


def _printable(data: bytes) -> str:
    text = data.decode("ascii", errors="replace")
    return "".join(c if c.isprintable() else "." for c in text)[:60]


class SerialTransport(Transport):
    def __init__(self, port: str, baudrate: int = 115200) -> None:
        self.port = port
        self.serial = open_port(port, baudrate)
        self._rx = bytearray()
        self.in_raw_repl = False
        self.use_raw_paste = True
        self.bytes_sent = 0
        self.bytes_received = 0

    def close(self) -> None:
        try:
            self.serial.close()
        except (OSError, serial.SerialException):
            pass

    # -- bytes -------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        try:
            self.serial.write(data)
        except serial.SerialTimeoutException:
            raise NoReplError("the board stopped reading from %s; %s" % (self.port, RESET_HINT)) from None
        except (OSError, serial.SerialException) as exc:
            raise TransportError("lost the board on %s: %s" % (self.port, exc)) from None
        self.bytes_sent += len(data)

    def _fill(self) -> bool:
        """Read what has arrived (waiting at most the port's 50 ms); True if anything did."""
        try:
            data = self.serial.read(max(1, self.serial.in_waiting))
        except (OSError, serial.SerialException) as exc:
            raise TransportError("lost the board on %s: %s" % (self.port, exc)) from None
        if data:
            self._rx += data
            self.bytes_received += len(data)
        return bool(data)

    def read_until(self, ending: bytes, timeout: float) -> bytes:
        """Bytes up to and including ``ending``; partial data if ``timeout`` s pass
        without any new byte arriving."""
        last = time.monotonic()
        while True:
            i = self._rx.find(ending)
            if i >= 0:
                out = bytes(self._rx[:i + len(ending)])
                del self._rx[:i + len(ending)]
                return out
            if self._fill():
                last = time.monotonic()
            elif time.monotonic() - last > timeout:
                out = bytes(self._rx)
                self._rx.clear()
                return out

    def read_exactly(self, n: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self._rx) < n and time.monotonic() < deadline:
            self._fill()
        out = bytes(self._rx[:n])
        del self._rx[:n]
        return out

    def drain(self, quiet: float = 0.1, limit: float = 2.0) -> bytes:
        """Read until the line has been quiet for ``quiet`` s (at most ``limit`` s)."""
        end = time.monotonic() + limit
        last = time.monotonic()
        while time.monotonic() < end:
            if self._fill():
                last = time.monotonic()
            elif time.monotonic() - last > quiet:
                break
        out = bytes(self._rx)
        self._rx.clear()
        return out

    def readline(self, timeout: float) -> bytes | None:
        """One line of device output (without the line ending), or None after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            i = self._rx.find(b"\n")
            if i >= 0:
                line = bytes(self._rx[:i]).rstrip(b"\r")
                del self._rx[:i + 1]
                return line
            if time.monotonic() >= deadline:
                return None
            self._fill()

    # -- REPL modes ----------------------------------------------------------------
    def interrupt(self) -> None:
        # Ctrl-C: KeyboardInterrupt in whatever runs (main.py, a half-run command).
        self.write(b"\x03")

    def enter_raw_repl(self, timeout: float = 2.0) -> None:
        """Stop what runs and switch to the raw REPL, or explain why that failed."""
        seen = bytearray()
        for attempt in range(2):
            # "\r" ends any half-typed friendly-REPL line.  Ctrl-C twice: the
            # first stops a running program (the agent's main.py), the second
            # aborts a raw-paste that a killed host left half-sent.
            self.write(b"\r\x03\x03")
            seen += self.drain(quiet=0.2, limit=3.0)
            # Ctrl-A: enter the raw REPL.
            self.write(b"\r\x01")
            data = self.read_until(RAW_BANNER + b">", timeout)
            seen += data
            if data.endswith(RAW_BANNER + b">"):
                self.in_raw_repl = True
                return
            if attempt == 0:
                time.sleep(0.5)  # a board still printing its boot messages
        if not seen.strip(b"\r\n\x00"):
            raise NoReplError("no answer from %s: the MicroPython REPL is not responding; %s"
                              % (self.port, RESET_HINT))
        raise NotMicroPythonError(
            "the device on %s is not running MicroPython: it answered %r instead of the raw REPL "
            "(flash MicroPython first: see docs/makers.md, or `surge flash --firmware BIN` on ESP32)"
            % (self.port, _printable(bytes(seen).strip())))

    def exit_raw_repl(self) -> None:
        # Ctrl-B: back to the friendly REPL.
        self.write(b"\r\x02")
        self.in_raw_repl = False

    def soft_reset(self) -> None:
        """Reboot the board's interpreter so it runs boot.py and main.py."""
        # Ctrl-B first: a soft reset from the raw REPL would skip main.py.
        self.exit_raw_repl()
        self.drain(quiet=0.1, limit=1.0)
        # Ctrl-D at the friendly REPL: soft reset.
        self.write(b"\x04")

    # -- running code ------------------------------------------------------------------
    def exec_raw(self, code: bytes, timeout: float = 10.0) -> tuple[bytes, bytes]:
        if not self.in_raw_repl:
            self.enter_raw_repl()
        self._send(code)
        out = self.read_until(b"\x04", timeout)  # end of stdout
        if not out.endswith(b"\x04"):
            raise NoReplError("the board stopped answering while running a command; %s" % RESET_HINT)
        err = self.read_until(b"\x04", timeout)  # end of stderr
        if not err.endswith(b"\x04"):
            raise NoReplError("the board stopped answering while running a command; %s" % RESET_HINT)
        prompt = self.read_until(b">", timeout)  # ready for the next command
        if not prompt.endswith(b">"):
            raise NoReplError("the board did not return to the raw REPL; %s" % RESET_HINT)
        return out[:-1], err[:-1]

    def _send(self, code: bytes) -> None:
        if self.use_raw_paste:
            # Ctrl-E 'A' 0x01: ask for raw-paste mode.
            self.write(b"\x05A\x01")
            answer = self.read_exactly(2, 2.0)
            if answer == b"R\x01":
                self._paste(code)
                return
            if answer != b"R\x00":
                # An older firmware took the three bytes as input and prints
                # the raw REPL banner again; wait for its prompt.
                rest = self.read_until(b"w REPL; CTRL-B to exit\r\n>", 2.0)
                if not rest.endswith(b">"):
                    raise TransportError("the raw REPL on %s did not answer the raw-paste request (%r)"
                                         % (self.port, _printable(answer + rest)))
            self.use_raw_paste = False  # do not ask again on this connection
        for i in range(0, len(code), _PLAIN_CHUNK):
            self.write(code[i:i + _PLAIN_CHUNK])
            time.sleep(_PLAIN_PAUSE_S)
        # Ctrl-D: end of input, run it.
        self.write(b"\x04")
        ok = self.read_exactly(2, 5.0)
        if ok != b"OK":
            raise TransportError("the raw REPL on %s refused the command (answered %r)"
                                 % (self.port, _printable(ok)))

    def _paste(self, code: bytes) -> None:
        header = self.read_exactly(2, 2.0)
        if len(header) != 2:
            raise NoReplError("no raw-paste window size from the board; %s" % RESET_HINT)
        window = struct.unpack("<H", header)[0]
        credit = window
        i = 0
        while i < len(code):
            # Take every flow-control byte that has arrived; block only when
            # the window is used up.
            while credit == 0 or self._rx or self.serial.in_waiting:
                got = self.read_exactly(1, 10.0)
                if not got:
                    raise NoReplError("the board stopped granting raw-paste windows; %s" % RESET_HINT)
                flag = got[0]
                if flag == 0x01:  # 0x01: room for one more window
                    credit += window
                elif flag == 0x04:  # 0x04: the device stopped reading early
                    self.write(b"\x04")  # 0x04: acknowledge; its error output follows
                    return
                else:
                    raise TransportError("unexpected byte 0x%02x from the board during raw paste" % flag)
            piece = code[i:i + credit]
            self.write(piece)
            credit -= len(piece)
            i += len(piece)
        # Ctrl-D: end of the pasted code.
        self.write(b"\x04")
        ack = self.read_until(b"\x04", 10.0)  # 0x04 back: the device has it all
        if not ack.endswith(b"\x04"):
            raise NoReplError("the board did not confirm the end of a raw paste; %s" % RESET_HINT)
