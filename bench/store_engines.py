"""Group 13, store engines: accepted-and-stored reports/s on SQLite and on PostgreSQL, same run.

Three runs of the same pre-signed reports (bench/gateway_throughput.py
machinery: a fresh Mosquitto, a real `surge gateway run`, timed from the first
publish until the database holds every report):

- 1 gateway on SQLite (the embedded default);
- 1 gateway on PostgreSQL;
- 2 gateways on one PostgreSQL (one share group, nodes a and b, one gateway id).

PostgreSQL is a private server (initdb + pg_ctl in a temp dir, loopback, a
free port; tests/pg_server.py) with its defaults (fsync and synchronous_commit
on), so a commit costs what it costs on a real server on this disk.  The raw
rate of the replicated broker cluster stands beside them as
``broker_cluster_per_s``, taken from group 12 of the same run.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import gateway_throughput as gt

ROOT = Path(__file__).resolve().parent.parent
GROUP = "13"
BROKER_CLUSTER_FIELD = "broker_cluster_per_s"


def _pg_server() -> Any:
    sys.path.insert(0, str(ROOT / "tests"))
    from pg_server import PostgresServer, bindir  # tests/pg_server.py: the fixture the tests use

    found = bindir()
    if found is None:
        raise RuntimeError("PostgreSQL server binaries not installed (make system-deps)")
    server = PostgresServer(found, durable=True)
    server.start()
    return server


def _enroll(url: str, publics: list[bytes]) -> None:
    from surge_protocol import claims as C
    from gateway.store import Store

    store = Store(url)
    now = time.time()
    with store._tx():
        store.db.executemany(
            "INSERT INTO devices(device_id, pubkey, board, fleet, owner, enrolled_at) VALUES (?, ?, ?, ?, ?, ?)",
            [(C.device_id(p), p, gt.BOARD, gt.FLEET, "bench", now) for p in publics],
        )
    store.close()


def _count(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as c:
        row = c.execute("SELECT COUNT(*) FROM reports").fetchone()
        return int(row[0]) if row else 0


def cluster_rate(
    workdir: Path, url: str, messages: list[tuple[str, bytes]], publics: list[bytes], members: int, timeout: float
) -> dict[str, Any]:
    """Stored reports/s with ``members`` gateways on the PostgreSQL database ``url``."""
    workdir.mkdir(parents=True)
    broker = gt.Broker(workdir / "broker", gt.DEFAULT_INFLIGHT)
    _enroll(url, publics)
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for i in range(members):
            node = "abcdefgh"[i]
            mdir = workdir / node
            mdir.mkdir()
            extra = ['db = "%s"' % url, 'gateway_id = "bench-gw"', 'node = "%s"' % node]
            if members > 1:
                extra.append('share_group = "bench"')
            cfg = gt.gateway_config(
                mdir,
                broker.port,
                Path("unused.db"),
                len(messages),
                len(publics),
                [e.replace(" = ", "=", 1) for e in extra],
            )
            log = open(mdir / "gateway.log", "w")
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "agent.cli", "gateway", "run", "--config", str(cfg)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                )
            )
            gt.wait_gateway_online(broker.port, procs[-1])
        time.sleep(1.0)  # every member subscribed (the status topic is shared by the cluster)
        done: dict[str, float] = {}

        def poll() -> None:
            deadline = time.monotonic() + timeout
            while _count(url) < len(messages) and time.monotonic() < deadline:
                if any(p.poll() is not None for p in procs):
                    return
                time.sleep(0.02)
            if _count(url) >= len(messages):
                done["t"] = time.monotonic()

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        first, _ = gt.publish_all(broker.port, messages, gt.DEFAULT_INFLIGHT)
        poller.join(timeout)
        if "t" not in done:
            raise RuntimeError(
                "%d gateway(s) on PostgreSQL stored %d of %d reports" % (members, _count(url), len(messages))
            )
        seconds = done["t"] - first
        return {"per_s": len(messages) / seconds, "seconds": seconds}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        for log in logs:
            log.close()
        broker.stop()


def group(r: Any, s: Any, work: Path, ctx: dict[str, Any]) -> None:
    from bench import run as B

    messages, publics = gt.presign(s.engine_reports, s.engine_devices)
    sqlite = B.gateway_rate(work / "sqlite", messages, publics, timeout=300)
    server = _pg_server()
    try:
        pg1 = cluster_rate(work / "pg1", server.url(server.create_database()), messages, publics, 1, 300)
        pg2 = cluster_rate(work / "pg2", server.url(server.create_database()), messages, publics, 2, 300)
    finally:
        server.stop()
    n = len(messages)
    r.add(
        GROUP,
        "Stored reports/s, 1 gateway on SQLite",
        sqlite["per_s"],
        "reports/s",
        note="%d reports from %d devices, first publish to last stored" % (n, s.engine_devices),
    )
    r.add(
        GROUP,
        "Stored reports/s, 1 gateway on PostgreSQL",
        pg1["per_s"],
        "reports/s",
        "1 gateway on SQLite",
        sqlite["per_s"],
        "reports/s",
        note="same reports; private server, fsync on",
    )
    r.add(
        GROUP,
        "Stored reports/s, 2 gateways on PostgreSQL",
        pg2["per_s"],
        "reports/s",
        "1 gateway on SQLite",
        sqlite["per_s"],
        "reports/s",
        note="one share group, one database; ingest commits serialised by an advisory lock",
    )
    # The replicated broker's raw rate, from group 12 of the same run (when it ran).
    rabbit = ctx.get("broker_cluster", {}).get("rabbitmq", {}).get("throughput", {}).get("per_s")
    r.add(
        GROUP,
        "Raw broker-cluster rate (%s)" % BROKER_CLUSTER_FIELD,
        rabbit,
        "msg/s",
        "1 gateway on SQLite",
        sqlite["per_s"],
        "reports/s",
        compare=False,
        note="group 12 of this run: QoS 1 publishes into RabbitMQ's R3 quorum queue (3 nodes); "
        "empty when group 12 did not run",
    )
