"""Two gateway processes on one PostgreSQL, one Mosquitto and one hardhat chain (issue 14).

Real parts throughout: `surge gateway run` twice (nodes a and b of one logical
gateway: same database, same chain key, one shared subscription), a private
PostgreSQL (tests/pg_server.py), Mosquitto (tests/broker.py) and hardhat's
node over JSON-RPC.  Each test publishes every report twice, so copies land
on both gateways, and then checks report by report (device, boot, seq):
stored exactly once, each in exactly one batch, each batch anchored exactly
once (the chain's Anchored events), a confirmed receipt for each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker import Mosquitto, free_port
from gateway.store import Store
from gw_helpers import Collector, Device
from gw_process import (
    HARDHAT_KEY_0,
    assert_anchored_once,
    HardhatNode,
    Miner,
    metric_value,
    metrics_text,
    stop,
    wait_for,
)

pytestmark = pytest.mark.timeout(300)

Key = tuple[str, int, int]


class Member:
    """One `surge gateway run` of the cluster, logging to tmp/<node>.log."""

    def __init__(self, tmp: Path, node_name: str, pg_url: str, broker: Mosquitto, chain: HardhatNode) -> None:
        self.name = node_name
        self.log_path = tmp / ("%s.log" % node_name)
        self.metrics_port = free_port()
        self.args = [
            sys.executable,
            "-m",
            "agent.cli",
            "gateway",
            "run",
            "--broker",
            broker.url,
            "--db",
            pg_url,
            "--chain",
            chain.url,
            "--share-group",
            "cluster",
            "--node",
            node_name,
            "--batch-size",
            "40",
            "--batch-seconds",
            "1",
            "--confirmations",
            "2",
            "--metrics-port",
            str(self.metrics_port),
            "--rate-limit",
            "1000",
            "--rate-burst",
            "1000",
            "--commit-group",
            "50",
        ]
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            self.args,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, SURGE_CHAIN_KEY=HARDHAT_KEY_0),
        )
        mark = self.log().count("connected to 127.0.0.1")
        wait_for(
            lambda: self.log().count("connected to 127.0.0.1") > mark or self.proc.poll() is not None,  # type: ignore[union-attr]
            90,
            "gateway %s subscribed" % self.name,
        )
        assert self.proc.poll() is None, self.log()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def leads(self) -> bool:
        """Whether this run took the lead (log lines since its last start)."""
        text = self.log().rsplit(": broker mqtt://", 1)[-1]  # from this run's start banner on
        last = text.rfind("leading the cluster")
        return last > text.rfind("lost the leader lock") and last >= 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def counter(self, name: str) -> float:
        return metric_value(metrics_text(self.metrics_port), name)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)  # type: ignore[arg-type]


class Load:
    """QoS 1 publisher of many devices' reports, each sent twice; remembers what the broker acknowledged."""

    def __init__(self, port: int, devices: list[Device]) -> None:
        self.devices = devices
        self.acked: set[Key] = set()
        self.lock = threading.Lock()
        self.pending: dict[int, Key] = {}
        self.done: set[int] = set()  # PUBACKs that may arrive before publish() returned the mid
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="load-%d" % time.monotonic_ns())
        self.client.max_inflight_messages_set(200)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any = None, props: Any = None) -> None:
        with self.lock:
            self.done.add(mid)
            self._reconcile()

    def _reconcile(self) -> None:
        for mid in self.done & self.pending.keys():
            self.acked.add(self.pending.pop(mid))
            self.done.discard(mid)

    def round(self, per_device: int = 1) -> None:
        """``per_device`` more reports from each device, each published twice (the same bytes)."""
        for _ in range(per_device):
            for d in self.devices:
                key = (d.id, d.boot, d.seq)
                data = d.report()
                for _copy in range(2):
                    # Not under self.lock: paho calls on_publish holding its own lock.
                    info = self.client.publish(d.topic, data, qos=1)
                    with self.lock:
                        self.pending[info.mid] = key
                        self._reconcile()

    def sent(self) -> set[Key]:
        return {(d.id, d.boot, s) for d in self.devices for s in range(d.seq)}

    def settle(self, timeout: float = 60) -> None:
        wait_for(lambda: self.acked >= self.sent(), timeout, "the broker's PUBACKs")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def stored(store: Store) -> list[Key]:
    return [(r[0], r[1], r[2]) for r in store.db.execute("SELECT device_id, boot, seq FROM reports")]


def check_exactly_once(store: Store, chain: HardhatNode, expected: set[Key], watch: Collector) -> None:
    """Every expected report stored once, batched once, anchored once, receipted."""
    wait_for(lambda: set(stored(store)) >= expected, 120, "every acknowledged report stored")
    rows = stored(store)
    assert len(rows) == len(set(rows)) == len(expected), "a report stored twice, or one never sent"
    assert set(rows) == expected
    wait_for(
        lambda: store.unbatched_count() == 0 and store.unconfirmed_count() == 0,
        180,
        "every report batched and every batch confirmed",
    )
    assert_anchored_once(store, chain.url, len(expected))

    def receipted() -> set[Key]:
        out = set()
        for _, payload in watch.of_kind("receipt"):
            rec = json.loads(payload)
            if rec.get("status") == "confirmed":
                out.add((rec["device"], rec["boot"], rec["seq"]))
        return out

    wait_for(lambda: receipted() >= expected, 120, "a confirmed receipt for every report")


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str, broker: Mosquitto, node: HardhatNode):  # type: ignore[no-untyped-def]
    devices = [Device() for _ in range(12)]
    store = Store(pg_url)
    for d in devices:
        store.enroll(d.id, d.key.public, d.board, d.fleet, "")
    miner = Miner(node)
    watch = Collector(broker.port, "surge/v1/+/+/receipt")
    members = [Member(tmp_path, name, pg_url, broker, node) for name in ("a", "b")]
    load: Load | None = None
    try:
        for m in members:
            m.start()
        wait_for(lambda: sum(m.leads() for m in members) == 1, 60, "one leader")
        load = Load(broker.port, devices)
        yield store, members, load, watch
    finally:
        if load is not None:
            load.close()
        for m in members:
            m.stop()
        watch.close()
        miner.stop()
        store.close()


def test_two_gateways_accept_and_anchor_each_report_once(cluster, node: HardhatNode) -> None:  # type: ignore[no-untyped-def]
    store, members, load, watch = cluster
    for _ in range(10):
        load.round()
    load.settle()
    check_exactly_once(store, node, load.sent(), watch)
    accepted = sum(m.counter("surge_reports_accepted_total") for m in members)
    duplicates = sum(m.counter("surge_reports_duplicate_total") for m in members)
    assert accepted == len(load.sent()), "accepted counted once across the cluster"
    assert duplicates == len(load.sent()), "every second copy counted as a duplicate"
    # Both ingested: the shared subscription hands each gateway its share of the copies.
    assert all(
        m.counter("surge_reports_accepted_total") + m.counter("surge_reports_duplicate_total") > 0 for m in members
    )
    assert all(m.alive() for m in members)


def test_a_second_member_with_another_gateway_id_is_refused(
    tmp_path: Path, pg_url: str, broker: Mosquitto, node: HardhatNode
) -> None:
    first = Member(tmp_path, "a", pg_url, broker, node)
    first.start()
    try:
        other = Member(tmp_path, "b", pg_url, broker, node)
        proc = subprocess.run(
            other.args + ["--gateway-id", "gw-other"],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, SURGE_CHAIN_KEY=HARDHAT_KEY_0),
        )
        assert proc.returncode != 0 and "belongs to gateway id" in proc.stderr, proc.stderr
        same_node = subprocess.run(
            first.args, capture_output=True, text=True, timeout=120, env=dict(os.environ, SURGE_CHAIN_KEY=HARDHAT_KEY_0)
        )
        assert same_node.returncode != 0 and "running as node 'a'" in same_node.stderr, same_node.stderr
    finally:
        first.stop()


def test_sigkill_of_the_leader_under_load(cluster, node: HardhatNode) -> None:  # type: ignore[no-untyped-def]
    store, members, load, watch = cluster
    for _ in range(8):
        load.round()
    leader = next(m for m in members if m.leads())
    follower = next(m for m in members if m is not leader)
    assert leader.proc is not None
    leader.proc.kill()  # SIGKILL; its ingest child follows (PR_SET_PDEATHSIG)
    leader.proc.wait()
    for _ in range(8):  # the load goes on while the follower takes over
        load.round()
        time.sleep(0.05)
    wait_for(follower.leads, 60, "the surviving gateway takes the lead")
    for _ in range(4):
        load.round()
    load.settle()
    # A supervisor restarts the killed gateway: what the broker had handed its
    # session, unacknowledged, is delivered again and found already stored or new.
    leader.start()
    check_exactly_once(store, node, load.sent(), watch)
    assert follower.leads() and not leader.leads()
    assert all(m.alive() for m in members)


def test_postgres_connections_killed_under_load(
    cluster,
    node: HardhatNode,
    pg_server,  # type: ignore[no-untyped-def]
    pg_url: str,
) -> None:
    store, members, load, watch = cluster
    dbname = pg_url.rsplit("/", 1)[1]
    for cut in range(2):
        for _ in range(6):
            load.round()
            time.sleep(0.02)
        # Once both gateways are connected again (ingest, pipeline stages, leader locks):
        wait_for(lambda: pg_server.backends(dbname) >= 6, 60, "the gateways' connections")
        assert pg_server.terminate_backends(dbname) >= 6  # every one of them
    for _ in range(6):
        load.round()
    load.settle()
    fresh = Store(pg_url)  # the test's own connection was cut too
    try:
        check_exactly_once(fresh, node, load.sent(), watch)
    finally:
        fresh.close()
    assert all(m.alive() for m in members), "no gateway crashed"
    logs = "".join(m.log() for m in members)
    assert "lost the connection to PostgreSQL" in logs and "reconnected to PostgreSQL" in logs
    wait_for(lambda: sum(m.leads() for m in members) == 1, 60, "one leader again")
