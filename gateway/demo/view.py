"""What the demo shows while it runs: a rich live table, or plain lines.

The per-device figures come from where an integrator would get them: a
subscriber on the fleet's ``verified``, ``status``, ``receipt`` and
``batches`` topics (docs/integrators.md).  Fleet totals come from the
gateway's own metrics.  When stdout is not a terminal (a test, a pipe, a
CI log) the view prints one plain line every few seconds instead.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from surge_protocol import topics

PLAIN_EVERY_S = 3.0
KIND_LABELS = {"sim": "cpython (sim)"}  # CPython agent whose probes are simulated
RATE_WINDOW_S = 5.0


@dataclass
class DeviceRow:
    device_id: str
    board: str
    kind: str  # "sim" (CPython agent, simulated probes), "micropython", "not enrolled"
    status: str = "-"
    seq: int | None = None
    storage_total: int | None = None
    storage_free: int | None = None
    bw_up: int | None = None
    rssi: int | None = None
    accepted: int = 0
    anchored: int = 0
    rejected: int = 0
    last_reason: str = ""


@dataclass
class Snapshot:
    elapsed: float
    duration: float  # 0: until Ctrl-C
    broker: str
    chain: str
    rows: list[DeviceRow]
    accepted: int
    rate: float
    rejected: dict[str, int]
    batches: int
    anchored: int
    last_anchor: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    phase: str = "running"


class Watcher:
    """A subscriber on the fleet's integrator topics, filling the device rows."""

    def __init__(self, host: str, port: int, fleet: str, rows: dict[str, DeviceRow], mqtt_version: str) -> None:
        self.rows = rows
        self.lock = threading.Lock()
        self.last_anchor: dict[str, Any] | None = None
        self.fleet = fleet
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id="surge-demo-view",
            protocol=mqtt.MQTTv5 if mqtt_version == "5" else mqtt.MQTTv311,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        base = topics.fleet_base(self.fleet)
        client.subscribe(
            [(base + "+/verified", 1), (base + "+/status", 1), (base + "+/receipt", 1), (base + "batches", 1)]
        )

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        try:
            with self.lock:
                if parts[-1] == "batches":
                    doc = json.loads(msg.payload)
                    if doc.get("event") == "confirmed":
                        self.last_anchor = dict(
                            doc.get("chain") or {}, batch_seq=doc["batch"]["batch_seq"], size=doc["batch"]["size"]
                        )
                    return
                row = self.rows.get(parts[3]) if len(parts) == 5 else None
                if row is None:
                    return
                if parts[4] == "status":
                    row.status = bytes(msg.payload).decode(errors="replace")[:10]
                elif parts[4] == "verified":
                    self._verified(row, json.loads(msg.payload))
                elif parts[4] == "receipt":
                    doc = json.loads(msg.payload)
                    if doc.get("status") == "rejected":
                        row.rejected += 1
                        row.last_reason = str(doc.get("reason", ""))
        except (ValueError, KeyError, TypeError):
            pass  # not ours to judge here; the gateway logs what it rejects

    @staticmethod
    def _verified(row: DeviceRow, doc: dict[str, Any]) -> None:
        if doc.get("batch") is not None:
            row.anchored += 1
            return
        row.accepted += 1
        c = doc.get("claims") or {}
        row.seq = doc.get("seq")
        row.storage_total = c.get("storage_total")
        row.storage_free = c.get("storage_free")
        row.bw_up = c.get("bw_up")
        row.rssi = c.get("rssi")

    def rows_copy(self) -> list[DeviceRow]:
        with self.lock:
            return [DeviceRow(**vars(r)) for r in self.rows.values()]

    def anchor_copy(self) -> dict[str, Any] | None:
        with self.lock:
            return dict(self.last_anchor) if self.last_anchor else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Rate:
    """Reports per second over the last few seconds."""

    def __init__(self) -> None:
        self.points: deque[tuple[float, int]] = deque()

    def add(self, now: float, total: int) -> float:
        self.points.append((now, total))
        while len(self.points) > 2 and now - self.points[0][0] > RATE_WINDOW_S:
            self.points.popleft()
        t0, n0 = self.points[0]
        return (total - n0) / (now - t0) if now > t0 else 0.0


def size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= div:
            return "%.1f %s" % (n / div, unit)
    return "%d B" % n


def _elapsed(s: Snapshot) -> str:
    if s.duration > 0:
        return "%.0f s of %.0f s" % (s.elapsed, s.duration)
    return "%.0f s (Ctrl-C to stop)" % s.elapsed


def _rejections(s: Snapshot) -> str:
    total = sum(s.rejected.values())
    if not total:
        return "0"
    return "%d (%s)" % (total, ", ".join("%s %d" % kv for kv in sorted(s.rejected.items())))


def _anchor(s: Snapshot) -> str:
    a = s.last_anchor
    if not a:
        return "nothing anchored yet"
    return "last: batch %s (%s reports) in block %s, tx %s" % (
        a.get("batch_seq"),
        a.get("size"),
        a.get("block_number"),
        str(a.get("tx_hash"))[:18] + "...",
    )


def plain_line(s: Snapshot) -> str:
    online = sum(1 for r in s.rows if r.status == "online")
    return "demo %s: %d/%d devices online, %d reports accepted (%.1f/s), rejected %s, %d batches, %d anchored; %s" % (
        _elapsed(s),
        online,
        len(s.rows),
        s.accepted,
        s.rate,
        _rejections(s),
        s.batches,
        s.anchored,
        _anchor(s),
    )


def render(s: Snapshot) -> Any:
    """The rich renderable of one snapshot."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    table = Table(expand=True, box=None, header_style="bold", pad_edge=False)
    for col, just in (
        ("device", "left"),
        ("board", "left"),
        ("agent", "left"),
        ("status", "left"),
        ("seq", "right"),
        ("storage free / total", "right"),
        ("upload", "right"),
        ("rssi", "right"),
        ("accepted", "right"),
        ("anchored", "right"),
        ("rejected", "right"),
    ):
        table.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    for r in s.rows:
        style = {"online": "green", "offline": "red"}.get(r.status, "dim")
        table.add_row(
            r.device_id,
            r.board,
            KIND_LABELS.get(r.kind, r.kind),
            Text(r.status, style=style),
            "-" if r.seq is None else str(r.seq),
            "%s / %s" % (size(r.storage_free), size(r.storage_total)) if r.storage_total else "-",
            "-" if r.bw_up is None else size(r.bw_up) + "/s",
            "-" if r.rssi is None else "%d dBm" % r.rssi,
            str(r.accepted),
            str(r.anchored),
            Text("%d %s" % (r.rejected, r.last_reason), style="red") if r.rejected else "0",
        )
    totals = Text.assemble(
        ("reports ", "bold"),
        "%d accepted, %.1f/s   " % (s.accepted, s.rate),
        ("rejected ", "bold"),
        _rejections(s) + "   ",
        ("batches ", "bold"),
        "%d closed, %d anchored   " % (s.batches, s.anchored),
        ("anchor ", "bold"),
        _anchor(s),
    )
    title = "Surge demo - %s - broker %s - chain %s" % (_elapsed(s), s.broker, s.chain)
    parts: list[Any] = [table, Text(""), totals]
    parts += [Text(n, style="yellow") for n in s.notes]
    if s.phase != "running":
        parts.append(Text(s.phase, style="bold cyan"))
    return Panel(Group(*parts), title=title, title_align="left")


class View:
    """Live table on a terminal, plain lines otherwise; ``update`` is cheap to call often."""

    def __init__(self, out: TextIO, live: bool | None = None) -> None:
        self.out = out
        self.live_view: Any = None
        self.last_plain = 0.0
        self.notes_shown = 0
        want = out.isatty() if live is None else live
        if want:
            try:
                from rich.console import Console
                from rich.live import Live
            except ImportError:
                print("(pip install rich for the live table; plain lines follow)", file=out)
            else:
                self.live_view = Live(console=Console(file=out), refresh_per_second=4, transient=False)

    def __enter__(self) -> View:
        if self.live_view is not None:
            self.live_view.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live_view is not None:
            self.live_view.stop()

    def update(self, s: Snapshot, force: bool = False) -> None:
        if self.live_view is not None:
            self.live_view.update(render(s))
            return
        for note in s.notes[self.notes_shown :]:
            print("note: " + note, file=self.out, flush=True)
        self.notes_shown = len(s.notes)
        now = time.monotonic()
        if force or now - self.last_plain >= PLAIN_EVERY_S:
            self.last_plain = now
            print(plain_line(s), file=self.out, flush=True)
