"""Talking to a MicroPython board: run code on it, and file operations built on that.

The layering follows mpremote's ``transport.py``: a subclass only knows how
to execute a piece of code on the device and return what it printed
(``exec_raw``); everything else here (eval, listing, hashing, reading,
writing, renaming) is Python code sent to the device, so it works the same
over any link that can run code (serial raw REPL today).

Data crosses the line as base64 text in both directions: the raw REPL treats
0x03 and 0x04 as control bytes (interrupt, end of input), and a .mpy or a
state file can contain both.  Base64 costs 4/3 of the bytes but never needs
escaping, and ``binascii`` is in every MicroPython firmware.

Device paths are '/'-separated strings; relative ones are relative to the
device's working directory, which is "/" on a board and the board directory
on the unix-port test harness.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

# Bytes of file data per exec when writing: small enough that the device
# compiles the chunk (base64 literal, then decoded) in a few KB of heap.
WRITE_CHUNK = 1024
# Bytes the device reads per step when hashing or sending a file.
READ_CHUNK = 768  # a multiple of 3: each base64 line decodes on its own

_ERRNO_RE = re.compile(r"OSError: (?:\[Errno )?(\d+)")
# Text errno names a board prints ("[Errno 28] ENOSPC") for the few we act on.
ENOENT, EEXIST, ENOSPC = 2, 17, 28


class TransportError(Exception):
    """The link to the device failed, or the device did not behave like MicroPython."""


class DeviceError(TransportError):
    """Code sent to the device raised an exception there."""

    def __init__(self, stdout: bytes, stderr: str) -> None:
        self.stdout = stdout
        self.stderr = stderr
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        self.last_line = lines[-1].strip() if lines else "error"
        super().__init__(self.last_line)

    @property
    def errno(self) -> int | None:
        m = _ERRNO_RE.search(self.stderr)
        return int(m.group(1)) if m else None

    @property
    def exc_type(self) -> str:
        return self.last_line.split(":", 1)[0]


@dataclass(frozen=True)
class DeviceInfo:
    """What the device says it is (sys.implementation, sys.platform, os.uname)."""

    name: str                 # "micropython" (CircuitPython says "circuitpython")
    version: tuple[int, ...]  # (1, 24, 1)
    machine: str              # "Generic ESP32 module with ESP32"
    platform: str             # sys.platform: "esp32", "rp2", "linux"
    mpy: int | None           # sys.implementation._mpy, None before MicroPython 1.19
    cwd: str                  # where bundle paths are rooted

    @property
    def version_text(self) -> str:
        return ".".join(str(v) for v in self.version[:3])

    @property
    def mpy_version(self) -> tuple[int, int] | None:
        """(.mpy version, sub-version) this firmware loads, from ``_mpy``."""
        if self.mpy is None:
            return None
        # Low byte: version; bits 8-9: sub-version; bits 10+: native arch.
        return self.mpy & 0xFF, (self.mpy >> 8) & 3


@dataclass(frozen=True)
class DirEntry:
    name: str
    is_dir: bool
    size: int


def quote(path: str) -> str:
    """A device path as a Python string literal (MicroPython reads repr's form)."""
    return repr(path)


def join(*parts: str) -> str:
    out = ""
    for p in parts:
        if not p:
            continue
        if p.startswith("/") or not out:
            out = p
        else:
            out = out.rstrip("/") + "/" + p
    return out


def dirname(path: str) -> str:
    i = path.rfind("/")
    return "" if i < 0 else (path[:i] or "/")


_INFO = """\
import sys, os
try:
    _m = os.uname().machine
except AttributeError:
    _m = sys.implementation._machine
print(repr((sys.implementation.name, tuple(sys.implementation.version), _m, sys.platform,
            getattr(sys.implementation, '_mpy', None), os.getcwd())))
del _m
"""

# Hash files on the device, one result line per path ("-" when missing), so
# the host compares 32-byte digests instead of reading whole files back.
_HASH = """\
import hashlib, binascii
def _h(p, b=bytearray(512)):
    try:
        f = open(p, 'rb')
    except OSError:
        return '-'
    h = hashlib.sha256()
    mv = memoryview(b)
    while True:
        n = f.readinto(b)
        if not n:
            break
        h.update(mv[:n])
    f.close()
    return binascii.hexlify(h.digest()).decode()
for _p in %s:
    print(_h(_p))
del _h
"""

_READ = """\
import binascii
f = open(%s, 'rb')
while True:
    b = f.read(%d)
    if not b:
        break
    print(binascii.b2a_base64(b).decode(), end='')
f.close()
del f, b
"""

# Walks a tree on the device; directories are mode 0x4000 in ilistdir.
_WALK = """\
import os
def _w(d):
    for e in os.ilistdir(d):
        p = (d.rstrip('/') + '/' + e[0]) if d else e[0]
        if e[1] & 0x4000:
            print(repr((p, 1, 0)))
            _w(p)
        else:
            print(repr((p, 0, e[3] if len(e) > 3 else 0)))
_w(%s)
del _w
"""

_MKDIRS = """\
import os
def _md(p):
    try:
        os.stat(p)
        return
    except OSError:
        pass
    i = p.rfind('/')
    if i > 0:
        _md(p[:i])
    os.mkdir(p)
for _p in %s:
    _md(_p)
del _md
"""

_RMTREE = """\
import os
def _rm(p):
    try:
        m = os.stat(p)[0]
    except OSError:
        return
    if m & 0x4000:
        for e in list(os.ilistdir(p)):
            _rm(p.rstrip('/') + '/' + e[0])
        os.rmdir(p)
    else:
        os.remove(p)
_rm(%s)
del _rm
"""


class Transport(ABC):
    """Run code on a MicroPython device and do file operations with it."""

    @abstractmethod
    def exec_raw(self, code: bytes, timeout: float = 10.0) -> tuple[bytes, bytes]:
        """Execute ``code`` on the device; (stdout, stderr) as it printed them."""

    def close(self) -> None:
        """Release the link (subclasses with a port override this)."""

    # -- code ------------------------------------------------------------------
    def exec(self, code: str, timeout: float = 10.0) -> bytes:
        out, err = self.exec_raw(code.encode(), timeout)
        if err:
            raise DeviceError(out, err.decode(errors="replace"))
        return out

    def eval(self, expr: str, timeout: float = 10.0) -> object:
        """The value of a device expression whose repr is a Python literal."""
        return self._literal(self.exec("print(repr(%s))" % expr, timeout))

    @staticmethod
    def _literal(out: bytes) -> object:
        text = out.decode(errors="replace").strip()
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise TransportError("unexpected answer from the device: %r" % text[:200]) from None

    def info(self) -> DeviceInfo:
        value = self._literal(self.exec(_INFO))
        if not isinstance(value, tuple) or len(value) != 6:
            raise TransportError("unexpected answer to sys.implementation: %r" % (value,))
        name, version, machine, platform, mpy, cwd = value
        return DeviceInfo(str(name), tuple(int(v) for v in version if isinstance(v, int)), str(machine),
                          str(platform), mpy if isinstance(mpy, int) else None, str(cwd))

    # -- files -----------------------------------------------------------------
    def walk(self, path: str) -> list[tuple[str, bool, int]]:
        """(path, is_dir, size) for everything under ``path``, parents first."""
        try:
            out = self.exec(_WALK % quote(path), timeout=30)
        except DeviceError as exc:
            if exc.errno == ENOENT:
                return []
            raise
        rows = []
        for line in out.decode(errors="replace").splitlines():
            if line.strip():
                p, d, size = ast.literal_eval(line)
                rows.append((str(p), bool(d), int(size)))
        return rows

    def listdir(self, path: str) -> list[DirEntry]:
        code = ("import os\nfor e in os.ilistdir(%s):\n print(repr((e[0], e[1] & 0x4000 != 0, "
                "e[3] if len(e) > 3 else 0)))" % quote(path or ""))
        out = self.exec(code)
        return [DirEntry(*ast.literal_eval(ln)) for ln in out.decode().splitlines() if ln.strip()]

    def hashes(self, paths: Sequence[str]) -> dict[str, str | None]:
        """SHA-256 (hex) of each device file, computed on the device; None if absent."""
        if not paths:
            return {}
        try:
            out = self.exec(_HASH % repr(list(paths)), timeout=30 + len(paths))
        except DeviceError as exc:
            if exc.exc_type not in ("ImportError", "AttributeError"):
                raise
            # A firmware without hashlib.sha256: read the files back instead.
            return {p: self._host_hash(p) for p in paths}
        lines = out.decode().split()
        if len(lines) != len(paths):
            raise TransportError("hashing on the device returned %d results for %d files"
                                 % (len(lines), len(paths)))
        return {p: (None if h == "-" else h) for p, h in zip(paths, lines)}

    def _host_hash(self, path: str) -> str | None:
        try:
            return hashlib.sha256(self.read_file(path)).hexdigest()
        except DeviceError as exc:
            if exc.errno == ENOENT:
                return None
            raise

    def read_file(self, path: str) -> bytes:
        out = self.exec(_READ % (quote(path), READ_CHUNK), timeout=60)
        return base64.b64decode(b"".join(out.split()))

    def write_file(self, path: str, data: bytes, progress: Callable[[int], None] | None = None,
                   chunk: int = WRITE_CHUNK) -> None:
        """Write ``data`` to ``path`` (replacing it); ``progress(n)`` after each chunk."""
        self.exec("from binascii import a2b_base64 as _d\n_f = open(%s, 'wb')\n_w = _f.write" % quote(path))
        try:
            for i in range(0, len(data), chunk):
                piece = base64.b64encode(data[i:i + chunk]).decode()
                self.exec("_w(_d(%r))" % piece, timeout=30)
                if progress is not None:
                    progress(min(len(data), i + chunk))
        except DeviceError:
            # Close the handle so a retry or a removal is not blocked by it.
            try:
                self.exec("_f.close()")
            except TransportError:
                pass
            raise
        self.exec("_f.close()\ndel _f, _w, _d")
        if not data and progress is not None:
            progress(0)

    def remove(self, path: str) -> None:
        self.exec("import os\nos.remove(%s)" % quote(path))

    def rmtree(self, path: str) -> None:
        self.exec(_RMTREE % quote(path), timeout=60)

    def rename(self, src: str, dst: str) -> None:
        self.exec("import os\nos.rename(%s, %s)" % (quote(src), quote(dst)))

    def mkdirs(self, paths: Sequence[str]) -> None:
        if paths:
            self.exec(_MKDIRS % repr(list(paths)))

    def exists(self, path: str) -> bool:
        try:
            self.exec("import os\nos.stat(%s)" % quote(path))
            return True
        except DeviceError as exc:
            if exc.exc_type == "OSError":
                return False
            raise

    def free_bytes(self, path: str) -> tuple[int, int] | None:
        """(free bytes, block size) of the filesystem holding ``path``; None if unknown."""
        try:
            value = self.eval("__import__('os').statvfs(%s)" % quote(path or "."))
        except DeviceError:
            return None
        if not isinstance(value, tuple) or len(value) < 5:
            return None
        bsize, frsize, _, _, bavail = value[:5]
        block = int(frsize or bsize)
        return int(bavail) * block, block
