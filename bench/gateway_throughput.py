"""Gateway throughput against the raw broker, measured in the same run.

    python -m bench.gateway_throughput --reports N --devices D --json OUT

(a) raw: paho-mqtt QoS 1 from one publisher through a fresh Mosquitto to one
    subscriber (a separate process, MQTT v5, auto-acknowledging), timed from
    the first publish to the N-th message received;
(b) gateway: the same pre-signed reports from D enrolled devices through a
    fresh Mosquitto to a real `surge gateway run` process, timed from the
    first publish until the database holds N accepted reports (batched or
    not). The gateway acknowledges each message only after its commit.

Both phases use the same publisher, which keeps at most ``--inflight``
messages unacknowledged (paho refuses more than 65,535 in flight). The bench
broker raises Mosquitto's ``max_inflight_messages`` (default 20, the number
of QoS 1 messages it sends a 3.1.1 client unacknowledged) to the same value
and lifts ``max_queued_messages``; both subscribers speak MQTT v5 and announce
the same Receive Maximum, which is what bounds the broker's sending to them.

Reports are signed with PyNaCl (the same bytes as the agent makes: Ed25519 is
deterministic). Each device's reports go out in seq order. The gateway runs
with the in-process memory chain and its default batch size, and with the
per-device rate limit lifted (a burst of N/D reports from one device would
otherwise be refused as rate_limited, by design).

``--cpu-split`` prints where the CPU went while the reports were stored (and,
with ``--gas``, until all were anchored): user + system CPU per report of the
gateway's pipeline and ingest processes (main thread, other threads), the
broker and the load generator, from ``/proc``.

``--profile FILE`` additionally runs the gateway's per-message path
(``Ingest.process``: verify + commit) in this process under
cProfile on the same reports, without broker or chain, and writes the stats.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from nacl.signing import SigningKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from surge_protocol import claims as C
from agent import report
from gateway.demo.broker import free_port
from firmware_shim import cbor

DEFAULT_INFLIGHT = 1000
RECEIVE_MAXIMUM = 2000  # what the gateway announces with its default commit group of 500
FLEET = "bench"
BOARD = "rpi-4"


# -- reports -------------------------------------------------------------------


def presign(n: int, devices: int) -> tuple[list[tuple[str, bytes]], list[bytes]]:
    """N reports from D devices, interleaved round robin, each device in seq order."""
    keys = [SigningKey(os.urandom(32)) for _ in range(devices)]
    publics = [bytes(k.verify_key) for k in keys]
    prev: list[bytes | None] = [None] * devices
    out: list[tuple[str, bytes]] = []
    now = int(time.time())
    for i in range(n):
        d = i % devices
        seq = i // devices
        claims = report.build_claims(
            seq=seq,
            bootcount=1,
            uptime=100 + seq,
            interval=60,
            iat=now,
            prev=prev[d],
            storage=(64_000_000_000, 12_000_000_000),
            net=(123456, 654321),
            bw=(1_000_000, 2_000_000),
            link_mbps=1000,
        )
        payload = cbor.dumps(claims)
        protected = b"\xa2\x01\x27\x04\x48" + C.kid(publics[d])
        sig = keys[d].sign(cbor.dumps(["Signature1", protected, b"", payload])).signature
        data = b"\xd2" + cbor.dumps([protected, {}, payload, sig])
        prev[d] = C.prev_hash(data)
        out.append(("surge/v1/%s/%s/report" % (FLEET, C.device_id(publics[d])), data))
    return out, publics


# -- broker --------------------------------------------------------------------


class Broker:
    def __init__(self, workdir: Path, inflight: int) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            "listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_inflight_messages %d\nmax_queued_messages 0\nlog_dest none\n" % (self.port, inflight)
        )
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# -- publisher -----------------------------------------------------------------


def publish_all(port: int, messages: list[tuple[str, bytes]], inflight: int) -> tuple[float, float]:
    """Publish at QoS 1 with at most ``inflight`` unacknowledged; (first publish, last PUBACK)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub-%d" % os.getpid())
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    window = threading.Semaphore(inflight)
    done = threading.Event()
    acked = [0]
    last = [0.0]

    def on_publish(c: Any, u: Any, mid: int, rc: Any = None, props: Any = None) -> None:
        window.release()
        acked[0] += 1
        if acked[0] == len(messages):
            last[0] = time.monotonic()
            done.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    first = time.monotonic()
    for topic, payload in messages:
        window.acquire()
        client.publish(topic, payload, qos=1)
    if not done.wait(600):
        raise RuntimeError("publisher: only %d of %d acknowledged" % (acked[0], len(messages)))
    client.loop_stop()
    client.disconnect()
    return first, last[0]


# -- (a) raw -----------------------------------------------------------------------


def subscriber_main(port: int, count: int) -> None:
    """Child process: subscribe, say 'ready', count ``count`` messages, print timings."""
    got = [0]
    stamps = [0.0, 0.0]
    done = threading.Event()
    ready = threading.Event()

    def on_message(c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        if got[0] == 0:
            stamps[0] = time.monotonic()
        got[0] += 1
        if got[0] == count:
            stamps[1] = time.monotonic()
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub-%d" % os.getpid(), protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = lambda *a: ready.set()
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    client.connect("127.0.0.1", port, properties=props)
    client.subscribe("surge/v1/+/+/report", qos=1)
    client.loop_start()
    ready.wait(10)
    print("ready", flush=True)
    ok = done.wait(600)
    client.loop_stop()
    print(json.dumps({"received": got[0], "first": stamps[0], "last": stamps[1], "ok": ok}), flush=True)


def measure_raw(workdir: Path, messages: list[tuple[str, bytes]], inflight: int) -> dict[str, Any]:
    broker = Broker(workdir / "raw-broker", inflight)
    try:
        sub = subprocess.Popen(
            [sys.executable, "-m", "bench.gateway_throughput", "--_subscriber", str(broker.port), str(len(messages))],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert sub.stdout is not None
        if sub.stdout.readline().strip() != "ready":
            raise RuntimeError("subscriber did not start")
        first, _ = publish_all(broker.port, messages, inflight)
        out = json.loads(sub.stdout.readline())
        sub.wait(30)
        if not out["ok"]:
            raise RuntimeError("raw subscriber got %d of %d" % (out["received"], len(messages)))
        seconds = out["last"] - first
        return {"messages": len(messages), "seconds": seconds, "per_s": len(messages) / seconds}
    finally:
        broker.stop()


# -- (b) gateway -------------------------------------------------------------------


def enroll_all(db: Path, publics: list[bytes]) -> None:
    from gateway.store import Store

    store = Store(db)
    for pub in publics:
        store.enroll(C.device_id(pub), pub, BOARD, FLEET, "bench")
    store.close()


def gateway_config(workdir: Path, port: int, db: Path, n: int, devices: int, extra: list[str]) -> Path:
    """The bench gateway's TOML: memory chain, rate limit lifted, ``extra`` KEY=VALUE lines last."""
    values = {
        "broker": '"mqtt://127.0.0.1:%d"' % port,
        "db": '"%s"' % db.name,
        "chain": '"memory"',
        "rate_limit_per_s": "1000000.0",
        "rate_burst": str(max(50, n // devices + 1)),
        "log_level": '"warning"',
    }
    for line in extra:
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    path = workdir / "gateway.toml"
    path.write_text("[gateway]\n" + "".join("%s = %s\n" % kv for kv in values.items()))
    return path


def wait_gateway_online(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    online = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-watch-%d" % os.getpid())
    client.on_message = lambda c, u, m: online.set() if m.payload == b"online" else None
    client.connect("127.0.0.1", port)
    client.subscribe("surge/v1/_gateway/+/status", qos=1)
    client.loop_start()
    deadline = time.monotonic() + timeout
    while not online.wait(0.1):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("gateway did not come online")
    client.loop_stop()
    client.disconnect()


def count_reports(db: Path) -> int:
    con = sqlite3.connect(str(db), timeout=30)
    try:
        return int(con.execute("SELECT COUNT(*) FROM reports").fetchone()[0])
    finally:
        con.close()


def with_children(pid: int) -> list[int]:
    """``pid`` and its child processes (the gateway's ingest process, gateway/ingest_process.py)."""
    pids = [pid]
    try:
        for task in os.listdir("/proc/%d/task" % pid):
            pids += [int(c) for c in Path("/proc/%d/task/%s/children" % (pid, task)).read_text().split()]
    except OSError:
        pass
    return pids


def stat_cpu_s(path: str) -> float:
    """User + system CPU seconds in a /proc ``stat`` file (a process's or one thread's)."""
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(roles: dict[int, str]) -> dict[str, float]:
    """CPU seconds (user + system) so far per role: each process's main thread and its other threads
    (the process total counts threads that have ended, e.g. the publisher's network thread)."""
    out: dict[str, float] = {}
    for pid, role in roles.items():
        try:
            total, main = stat_cpu_s("/proc/%d/stat" % pid), stat_cpu_s("/proc/%d/task/%d/stat" % (pid, pid))
        except OSError:
            continue
        out[role + ": main thread"] = main
        out[role + ": other threads"] = total - main
    return out


def cpu_split_table(roles: dict[int, str], marks: list[tuple[str, dict[str, float]]], n: int) -> str:
    """µs of CPU per report for each role between the first mark and each later one."""
    _, first = marks[0]
    lines = ["%-52s %s" % ("CPU per report (us)", "  ".join("%14s" % name for name, _ in marks[1:]))]
    for key in sorted({k for _, m in marks for k in m}):  # threads may start after the first mark
        lines.append(
            "%-52s %s"
            % (key, "  ".join("%14.1f" % ((m.get(key, 0.0) - first.get(key, 0.0)) / n * 1e6) for _, m in marks[1:]))
        )
    return "\n".join(lines)


def measure_gateway(
    workdir: Path,
    messages: list[tuple[str, bytes]],
    publics: list[bytes],
    inflight: int,
    extra: list[str],
    gas: bool = False,
    cpu_split: bool = False,
) -> dict[str, Any]:
    gwdir = workdir / "gateway"
    gwdir.mkdir()
    broker = Broker(workdir / "gw-broker", inflight)
    db = gwdir / "gw.db"
    enroll_all(db, publics)
    cfg = gateway_config(gwdir, broker.port, db, len(messages), len(publics), extra)
    log = open(gwdir / "gateway.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "gateway", "run", "--config", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_gateway_online(broker.port, proc)
        result: dict[str, float] = {}

        def poll_db() -> None:
            while count_reports(db) < len(messages):
                if proc.poll() is not None:
                    return
                time.sleep(0.02)
            result["done"] = time.monotonic()

        poller = threading.Thread(target=poll_db, daemon=True)
        roles = {
            proc.pid: "gateway pipeline process",
            broker.proc.pid: "mosquitto",
            os.getpid(): "load generator (this process)",
        }
        roles.update({c: "gateway ingest process" for c in with_children(proc.pid)[1:]})
        marks = [("start", thread_cpu(roles))]
        poller.start()
        first, _ = publish_all(broker.port, messages, inflight)
        poller.join(600)
        marks.append(("until stored", thread_cpu(roles)))
        if "done" not in result:
            raise RuntimeError(
                "gateway stored %d of %d reports (see %s)" % (count_reports(db), len(messages), gwdir / "gateway.log")
            )
        seconds = result["done"] - first
        con = sqlite3.connect(str(db))
        rejected = dict(con.execute("SELECT reason, count FROM rejection_counts").fetchall())
        con.close()
        out: dict[str, Any] = {
            "messages": len(messages),
            "seconds": seconds,
            "per_s": len(messages) / seconds,
            "rejections": rejected,
        }
        if gas:
            out["gas"] = anchored_gas(db, len(messages), proc)
            marks.append(("until anchored", thread_cpu(roles)))
        if cpu_split:
            out["cpu_split"] = cpu_split_table(roles, marks, len(messages))
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        broker.stop()


def anchored_gas(db: Path, n: int, proc: subprocess.Popen[bytes], timeout: float = 300) -> dict[str, Any]:
    """Wait until every report is in a confirmed batch; gas used per anchor and per report."""
    deadline = time.monotonic() + timeout
    query = (
        "SELECT b.seq, b.size, a.gas_used FROM batches b JOIN anchors a ON a.batch_seq = b.seq "
        "AND a.state = 'confirmed' ORDER BY b.seq"
    )
    while True:
        con = sqlite3.connect(str(db), timeout=30)
        rows = con.execute(query).fetchall()
        con.close()
        if sum(size for _, size, _ in rows) >= n:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("only %d of %d reports anchored" % (sum(r[1] for r in rows), n))
        time.sleep(0.2)
    gas = [g for _, _, g in rows]
    return {
        "batches": len(rows),
        "batch_sizes": sorted({size for _, size, _ in rows}),
        "gas_per_anchor": gas,
        "mean_gas_per_anchor": sum(gas) / len(gas),
        "gas_per_report": sum(gas) / sum(size for _, size, _ in rows),
    }


# -- profile of the per-message path ---------------------------------------------------


class _Msg:
    """What Ingest.process reads from a received message."""

    __slots__ = ("topic", "payload", "packet_id", "qos")

    def __init__(self, topic: str, payload: bytes, packet_id: int) -> None:
        self.topic, self.payload, self.packet_id, self.qos = topic, payload, packet_id, 1


def profile_ingest(workdir: Path, messages: list[tuple[str, bytes]], publics: list[bytes], out: Path) -> dict[str, Any]:
    """Ingest.process (verify + commit, no acknowledging) over all messages in commit groups, under cProfile."""
    from gateway.config import GatewayConfig
    from gateway.ingest import Ingest
    from gateway.metrics import IngestMetrics
    from gateway.store import Store

    db = workdir / "profile.db"
    enroll_all(db, publics)
    cfg = GatewayConfig(db=str(db), rate_limit_per_s=1e6, rate_burst=len(messages))
    ingest = Ingest(cfg, Store(db), IngestMetrics(), "bench")
    msgs = [_Msg(t, p, i + 1) for i, (t, p) in enumerate(messages)]
    group = cfg.commit_group
    prof = cProfile.Profile()
    started = time.perf_counter()
    prof.enable()
    for i in range(0, len(msgs), group):
        ingest.process(msgs[i : i + group])  # type: ignore[arg-type]
    prof.disable()
    seconds = time.perf_counter() - started
    prof.dump_stats(str(out))
    stored = count_reports(db)
    stats = pstats.Stats(prof)
    stats.sort_stats("cumulative").print_stats(25)
    return {"messages": len(msgs), "stored": stored, "seconds_under_cprofile": seconds, "stats": str(out)}


def ingest_cpu(workdir: Path, messages: list[tuple[str, bytes]], publics: list[bytes]) -> float:
    """CPU µs per report of Ingest.process (verify + commit) alone, in this process: no broker, no pipeline.

    For the cost of fleet size (bench group 7): the same number of reports
    from more distinct devices means more first reports, cold caches and a
    larger registry and state table.
    """
    from gateway.config import GatewayConfig
    from gateway.ingest import Ingest
    from gateway.metrics import IngestMetrics
    from gateway.store import Store

    db = workdir / "ingest-cpu.db"
    enroll_all(db, publics)
    cfg = GatewayConfig(db=str(db), rate_limit_per_s=1e6, rate_burst=len(messages))
    ingest = Ingest(cfg, Store(db), IngestMetrics(), "bench")
    msgs = [_Msg(t, p, i % 65535 + 1) for i, (t, p) in enumerate(messages)]
    started = time.process_time()
    for i in range(0, len(msgs), cfg.commit_group):
        ingest.process(msgs[i : i + cfg.commit_group])  # type: ignore[arg-type]
    cpu = time.process_time() - started
    if count_reports(db) != len(messages):
        raise RuntimeError("ingest stored %d of %d reports" % (count_reports(db), len(messages)))
    return cpu * 1e6 / len(messages)


# -- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=20000, metavar="N")
    parser.add_argument("--devices", type=int, default=200, metavar="D")
    parser.add_argument(
        "--inflight",
        type=int,
        default=DEFAULT_INFLIGHT,
        help="publisher's cap on unacknowledged messages, and the broker's max_inflight_messages",
    )
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON")
    parser.add_argument("--profile", metavar="FILE", help="also profile Ingest.process with cProfile into FILE")
    parser.add_argument(
        "--gateway-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra TOML line for the gateway's config, e.g. batch_size=10000 (repeatable)",
    )
    parser.add_argument(
        "--gas",
        action="store_true",
        help="after the timing, wait until all reports are anchored and report gas per report",
    )
    parser.add_argument(
        "--cpu-split",
        action="store_true",
        help="print CPU per report of each process (main thread and the others): gateway "
        "pipeline and ingest, broker, load generator; with --gas also until anchored",
    )
    parser.add_argument(
        "--ingest-cpu",
        action="store_true",
        help="only: CPU per report of the ingest path alone, in this process (no broker)",
    )
    parser.add_argument("--skip-raw", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_subscriber", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._subscriber:
        subscriber_main(*args._subscriber)
        return 0
    if args.reports < 1 or not 1 <= args.devices <= args.reports:
        parser.error("need 1 <= devices <= reports")

    workdir = Path(tempfile.mkdtemp(prefix="surge-bench-"))
    try:
        t = time.monotonic()
        messages, publics = presign(args.reports, args.devices)
        print(
            "signed %d reports from %d devices in %.1f s (%d bytes each on average)"
            % (len(messages), len(publics), time.monotonic() - t, sum(len(p) for _, p in messages) // len(messages)),
            flush=True,
        )
        result: dict[str, Any] = {
            "reports": args.reports,
            "devices": args.devices,
            "inflight": args.inflight,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
        }
        if args.ingest_cpu:
            result["ingest_cpu_us_per_report"] = ingest_cpu(workdir, messages, publics)
            print("ingest path alone, in process:      %8.1f us CPU per report" % result["ingest_cpu_us_per_report"])
            if args.json:
                Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
            return 0
        if not args.skip_raw:
            result["raw_qos1"] = measure_raw(workdir, messages, args.inflight)
            print("raw paho QoS 1 through Mosquitto:  %8.0f msg/s" % result["raw_qos1"]["per_s"], flush=True)
        result["gateway_options"] = args.gateway_option
        result["gateway"] = measure_gateway(
            workdir, messages, publics, args.inflight, args.gateway_option, gas=args.gas, cpu_split=args.cpu_split
        )
        print("gateway verified + stored:          %8.0f reports/s" % result["gateway"]["per_s"], flush=True)
        if "raw_qos1" in result:
            result["ratio"] = result["gateway"]["per_s"] / result["raw_qos1"]["per_s"]
            print("ratio gateway / raw:                %8.2f" % result["ratio"])
        if "gas" in result["gateway"]:
            g = result["gateway"]["gas"]
            print(
                "gas: %d anchors of %s reports, mean %.0f gas per anchor, %.1f gas per report"
                % (g["batches"], g["batch_sizes"], g["mean_gas_per_anchor"], g["gas_per_report"])
            )
        if args.cpu_split:
            print(result["gateway"]["cpu_split"])
        if result["gateway"]["rejections"]:
            print("WARNING: the gateway rejected some reports: %s" % result["gateway"]["rejections"])
        if args.profile:
            result["profile"] = profile_ingest(workdir, messages, publics, Path(args.profile))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
