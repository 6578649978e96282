"""Replicated broker clusters compared: RabbitMQ (quorum queue) against NATS JetStream (R3 stream).

    python -m bench.broker_cluster [--smoke] [--out FILE]   # writes bench/results/broker-cluster.json
    python -m bench.run --only 12                           # the same, as group 12 of `make bench`

The smoke run (`make bench-smoke`) measures RabbitMQ only, at small sizes.

For each engine, on a fresh 3-node cluster on loopback (gateway/cluster/):

* throughput: real MQTT 3.1.1 QoS 1 publishers (gateway/cluster/load.py),
  spread over the three nodes' MQTT listeners, into the replicated durable
  store (RabbitMQ: the gateway's quorum queue ``surge.reports``; NATS: the
  R3 work-queue stream ``SURGE_REPORTS``), counted as PUBACKed messages per
  second of wall clock; then everything is read back and counted;
* RabbitMQ only: the gateway on it: signed reports queued while no gateway
  runs (their rate into the queue is the baseline), then `surge gateway run
  --source amqp://...` on SQLite, reports accepted per second from the first
  accepted to the last;
* a SIGKILL of the store's leader node under load: publishers on the killed
  node fail over to another one and resend their unacknowledged window; at the
  end every PUBACKed message is looked up, one by one, in what a consumer
  reads back from the surviving nodes: ``lost`` (PUBACKed, never read) and
  ``duplicated`` (read more than once) are the figures that decide.

docs/cluster.md reads these numbers and says which engine the gateway uses.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import pika

from gateway.cluster.common import ClusterError
from gateway.cluster.load import FailoverPublisher, run_publishers
from gateway.cluster.nats import REPORT_SUBJECTS, REPORTS_STREAM, NatsCluster
from gateway.cluster.rabbitmq import RabbitCluster
from gateway.source_amqp import REPORTS_QUEUE

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "broker-cluster.json"
PAYLOAD = 200  # bytes, about one signed report


def _messages(pub: int, n: int) -> list[tuple[str, bytes]]:
    topic = "surge/v1/bench/dev%03d/report" % pub
    return [(topic, (b"%03d:%07d:" % (pub, i)).ljust(PAYLOAD, b"x")) for i in range(n)]


def _key(body: bytes) -> tuple[int, int]:
    pub, i, _ = body.split(b":", 2)
    return int(pub), int(i)


# -- engines: store setup and read-back --------------------------------------------


class Engine(Protocol):
    name: str
    cluster: Any

    def setup(self) -> None: ...
    def leader(self) -> int: ...
    def drain(self, idle_s: float = 3.0) -> list[bytes]: ...
    def left(self) -> int: ...


class Rabbit:
    name = "rabbitmq"

    def __init__(self, work: Path) -> None:
        self.cluster = RabbitCluster(work)

    def setup(self) -> None:
        self.cluster.declare_reports_queue(1)

    def leader(self) -> int:
        return self.cluster.queue_leader() or 1

    def drain(self, idle_s: float = 3.0) -> list[bytes]:
        node = self.cluster.running()[0]
        conn = pika.BlockingConnection(pika.URLParameters(node.amqp_url))
        ch = conn.channel()
        ch.basic_qos(prefetch_count=2000)
        got: list[bytes] = []
        last_tag = [0]

        def on(channel: Any, method: Any, props: Any, body: bytes) -> None:
            got.append(body)
            last_tag[0] = method.delivery_tag

        ch.basic_consume(REPORTS_QUEUE, on, auto_ack=False)
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < idle_s:
            n = len(got)
            conn.process_data_events(time_limit=0.5)
            if last_tag[0]:
                ch.basic_ack(last_tag[0], multiple=True)
                last_tag[0] = 0
            if len(got) != n:
                idle_since = time.monotonic()
        conn.close()
        return got

    def left(self) -> int:
        """Messages still in the queue after a drain (0 unless the read-back missed some)."""
        node = self.cluster.running()[0]
        conn = pika.BlockingConnection(pika.URLParameters(node.amqp_url))
        try:
            return int(conn.channel().queue_declare(REPORTS_QUEUE, passive=True).method.message_count)
        finally:
            conn.close()


class Nats:
    name = "nats"

    def __init__(self, work: Path) -> None:
        self.cluster = NatsCluster(work)

    def _run(self, fn: Callable[[Any], Any]) -> Any:
        import nats

        async def go() -> Any:
            nc = await nats.connect(
                [n.url for n in self.cluster.running()], connect_timeout=5, max_reconnect_attempts=5
            )
            try:
                return await fn(nc.jetstream())
            finally:
                await nc.close()

        return asyncio.run(go())

    def setup(self) -> None:
        from nats.js.api import RetentionPolicy, StreamConfig

        async def add(js: Any) -> None:
            deadline = time.monotonic() + 30
            while True:  # the meta leader may still be electing right after start
                try:
                    await js.add_stream(
                        StreamConfig(
                            name=REPORTS_STREAM,
                            subjects=list(REPORT_SUBJECTS),
                            retention=RetentionPolicy.WORK_QUEUE,
                            num_replicas=3,
                        )
                    )
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)

        self._run(add)

    def leader(self) -> int:
        async def info(js: Any) -> Any:
            return (await js.stream_info(REPORTS_STREAM)).cluster.leader

        name = self._run(info)
        return next(int(n.index) for n in self.cluster.nodes if n.name == name)

    def left(self) -> int:
        """Messages still in the stream after a drain (0 unless the read-back missed some)."""

        async def info(js: Any) -> int:
            return int((await js.stream_info(REPORTS_STREAM)).state.messages)

        return int(self._run(info))

    def drain(self, idle_s: float = 3.0) -> list[bytes]:
        import nats.errors

        async def pull(js: Any) -> list[bytes]:
            deadline = time.monotonic() + 60
            while True:  # right after a node kill the JetStream API may time out until a leader is elected
                try:
                    sub = await js.pull_subscribe(">", durable="bench-drain", stream=REPORTS_STREAM)
                    break
                except nats.errors.TimeoutError:
                    if time.monotonic() > deadline:
                        raise
            got: list[bytes] = []
            idle_since = time.monotonic()
            while time.monotonic() - idle_since < idle_s:
                try:
                    msgs = await sub.fetch(500, timeout=1.0)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    continue
                for m in msgs:
                    got.append(m.data)
                    await m.ack()
                idle_since = time.monotonic()
            return got

        result: list[bytes] = self._run(pull)
        return result


# -- runs ----------------------------------------------------------------------------


def _publishers(engine: Engine, pubs: int, per_pub: int, stop: threading.Event, prefix: str) -> list[FailoverPublisher]:
    ports = engine.cluster.mqtt_ports
    return [FailoverPublisher(ports, k, "%s-%d" % (prefix, k), _messages(k, per_pub), stop) for k in range(pubs)]


def throughput(engine: Engine, pubs: int, per_pub: int) -> dict[str, Any]:
    stop = threading.Event()
    ps = _publishers(engine, pubs, per_pub, stop, "tp")
    seconds = run_publishers(ps, timeout=300)
    acked = sum(len(p.stats.acked) for p in ps)
    read = engine.drain(idle_s=3.0 if per_pub > 1000 else 1.5)
    return {
        "publishers": pubs,
        "acked": acked,
        "seconds": round(seconds, 2),
        "per_s": round(acked / seconds, 1),
        "read_back": len(read),
    }


def gateway_from_queue(engine: Rabbit, work: Path, n: int, devices: int) -> dict[str, Any]:
    """Signed reports queued with no gateway running, then `surge gateway run --source`: accepted per second."""
    import subprocess
    import sys

    from bench import gateway_throughput as gt

    messages, publics = gt.presign(n, devices)
    stop = threading.Event()
    ports = engine.cluster.mqtt_ports
    # A device's reports stay with one publisher, in seq order.
    per_pub = [[m for i, m in enumerate(messages) if (i % devices) % 6 == k] for k in range(6)]
    pubs = [FailoverPublisher(ports, k, "gwq-%d" % k, per_pub[k], stop) for k in range(6)]
    queued_s = run_publishers(pubs, timeout=300)
    work.mkdir(parents=True, exist_ok=True)
    db = work / "gw.db"
    gt.enroll_all(db, publics)
    source = ",".join(engine.cluster.amqp_urls)
    cfg = gt.gateway_config(work, ports[0], db, n, devices, ['mqtt_version = "3.1.1"', 'source = "%s"' % source])
    log = open(work / "gateway.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "gateway", "run", "--config", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 300
        first: tuple[float, int] | None = None
        while True:
            count = gt.count_reports(db) if db.exists() else 0
            now = time.monotonic()
            if first is None and count:
                first = (now, count)
            if count >= n:
                break
            if proc.poll() is not None or now > deadline:
                raise RuntimeError(
                    "gateway stored %d of %d reports from the queue: %s"
                    % (count, n, (work / "gateway.log").read_text()[-1500:])
                )
            time.sleep(0.02)
        assert first is not None
        seconds = max(now - first[0], 1e-3)
        return {
            "reports": n,
            "devices": devices,
            "queued_per_s": round(n / queued_s, 1),
            "accepted_per_s": round((n - first[1]) / seconds, 1),
            "seconds": round(seconds, 2),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def kill_under_load(engine: Engine, pubs: int, load_s: float) -> dict[str, Any]:
    """SIGKILL the store's leader ``load_s``/3 into a ``load_s`` load; check every PUBACKed message."""
    stop = threading.Event()
    ps = _publishers(engine, pubs, 10_000_000 // pubs, stop, "kill")
    victim = engine.leader()
    timer = threading.Timer(load_s, stop.set)
    t0 = time.monotonic()
    for p in ps:
        p.start()
    timer.start()
    time.sleep(load_s / 3)  # load first; the kill lands mid-stream
    acked_before = sum(len(p.stats.acked) for p in ps)
    engine.cluster.kill_node(victim)
    killed_at = time.monotonic() - t0
    for p in ps:
        p.join(load_s + 120)
    timer.cancel()
    errors = [p.stats.error for p in ps if p.stats.error]
    counts = collections.Counter(_key(b) for b in engine.drain(idle_s=5.0 if load_s > 10 else 2.0))
    left = engine.left()
    acked_keys = [(k, i) for k, p in enumerate(ps) for i in p.stats.acked]
    lost = [key for key in acked_keys if counts[key] == 0]
    dup = sum(1 for c in counts.values() if c > 1)
    return {
        "killed_node": victim,
        "killed_at_s": round(killed_at, 1),
        "load_s": load_s,
        "acked": len(acked_keys),
        "acked_before_kill": acked_before,
        "read_back": sum(counts.values()),
        "lost": len(lost),
        "lost_examples": [list(k) for k in lost[:5]],
        "duplicated": dup,
        "left_in_store_after_read": left,
        "reconnects": sum(p.stats.reconnects for p in ps),
        "publisher_errors": errors,
    }


def measure(engine_cls: Callable[[Path], Engine], work: Path, smoke: bool) -> dict[str, Any]:
    pubs = 6
    per_pub = 300 if smoke else 2500
    load_s = 4.0 if smoke else 20.0
    out: dict[str, Any] = {}
    # One cluster for both phases: the throughput run's messages are all read back (and so
    # gone from the work queue) before the kill run starts.
    engine = engine_cls(work)
    t = time.monotonic()
    engine.cluster.start()
    out["start_s"] = round(time.monotonic() - t, 1)
    try:
        engine.setup()
        out["throughput"] = throughput(engine, pubs, per_pub)
        if isinstance(engine, Rabbit):
            out["gateway"] = gateway_from_queue(engine, work / "gateway", 1000 if smoke else 20_000, 200)
        out["kill"] = kill_under_load(engine, pubs, load_s)
    finally:
        engine.cluster.stop()
    return out


def run(work: Path, smoke: bool) -> dict[str, Any]:
    """Both engines; the smoke run (CI) checks only RabbitMQ, the one the gateway uses."""
    results: dict[str, Any] = {}
    engines: tuple[Callable[[Path], Engine], ...] = (Rabbit,) if smoke else (Rabbit, Nats)
    for cls in engines:
        name = str(getattr(cls, "name"))
        try:
            results[name] = measure(cls, work / name, smoke)
        except (ClusterError, RuntimeError) as exc:
            results[name] = {"error": str(exc)}
        print(name, json.dumps(results[name]), flush=True)
    return results


def group(r: Any, s: Any, work: Path, ctx: dict[str, Any]) -> None:
    """bench/run.py group 12."""
    smoke = s.reports < 10_000
    res = run(work, smoke)
    for name, m in res.items():
        if "error" in m:
            raise RuntimeError("%s: %s" % (name, m["error"]))
        r.add(
            "12",
            "%s: QoS 1 publishes into the R3 store" % name,
            m["throughput"]["per_s"],
            "msg/s",
            note="%d publishers over 3 nodes" % m["throughput"]["publishers"],
        )
        if "gateway" in m:
            r.add(
                "12",
                "%s: gateway accepts from the quorum queue" % name,
                m["gateway"]["accepted_per_s"],
                "reports/s",
                baseline="signed reports into the queue",
                baseline_value=m["gateway"]["queued_per_s"],
                baseline_unit="msg/s",
                note="%d reports queued with no gateway, then --source; SQLite" % m["gateway"]["reports"],
            )
        r.add(
            "12",
            "%s: PUBACKed, lost after leader SIGKILL" % name,
            m["kill"]["lost"],
            "msgs",
            baseline="PUBACKed",
            baseline_value=m["kill"]["acked"],
            baseline_unit="msgs",
            compare=False,
        )
        r.add("12", "%s: read twice after leader SIGKILL" % name, m["kill"]["duplicated"], "msgs", compare=False)
    ctx["broker_cluster"] = res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="surge-cluster-bench-") as tmp:
        started = time.time()
        res = run(Path(tmp), args.smoke)
    import os

    doc = {
        "format": "surge-bench-broker-cluster/1",
        "profile": "smoke" if args.smoke else "full",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "payload_bytes": PAYLOAD,
        "engines": res,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
