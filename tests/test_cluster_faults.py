"""The whole cluster under load, three faults in a row: 0 PUBACKed reports lost, 0 accepted or anchored twice.

Real parts throughout: a 3-node RabbitMQ cluster (MQTT plugin, the quorum
queue surge.reports; tests/cluster_fixtures.py), a private PostgreSQL
(tests/pg_server.py), hardhat's node over JSON-RPC as the one chain both
gateways anchor on, two `surge gateway run` processes on that PostgreSQL
consuming the queue with ``--source amqp://...``, and devices publishing
QoS 1 over plain MQTT to the RabbitMQ nodes, failing over between them
(gateway/cluster/load.py).

Under load (the publishers run until the test stops them, so every fault
lands while reports arrive) the test, one after the other:
1. SIGKILLs the RabbitMQ node leading the queue,
2. SIGKILLs the gateway that leads the cluster (a supervisor restarts it),
3. cuts every PostgreSQL connection of the gateway leading then
   (pg_terminate_backend on its store connections and its leader lock).
Then, report by report: each (device, boot, seq) a publisher saw PUBACKed
is stored exactly once, every batch is anchored exactly once (the contract's
Anchored events against the batches table, root for root), and each
report's proof bundle verifies offline against a root that is on chain.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from broker import free_port
from cluster_fixtures import Fleet, rabbit
from gateway import receipts
from gateway.cluster.rabbitmq import RabbitCluster
from gateway.db.leader import NODE_LOCK_CLASS
from gateway.store import Store
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

__all__ = ["rabbit"]  # the module-scoped cluster fixture

pytestmark = pytest.mark.timeout(420)

Key = tuple[str, int, int]


class Member:
    """One `surge gateway run` of the cluster; its PostgreSQL connections carry application_name surge-gw-NODE."""

    def __init__(
        self,
        tmp: Path,
        name: str,
        pg_url: str,
        rabbit: RabbitCluster,
        mqtt_node: int,
        source_nodes: list[int],
        chain: HardhatNode,
    ) -> None:
        self.name = name
        self.app = "surge-gw-%s" % name
        self.log_path = tmp / ("gateway-%s.log" % name)
        self.metrics_port = free_port()
        source = ",".join(rabbit.nodes[i - 1].amqp_url for i in source_nodes)
        self.args = [
            sys.executable,
            "-m",
            "agent.cli",
            "gateway",
            "run",
            "--broker",
            rabbit.nodes[mqtt_node - 1].mqtt_url,
            "--mqtt-version",
            "3.1.1",
            "--source",
            source,
            "--db",
            "%s?application_name=%s" % (pg_url, self.app),
            "--chain",
            chain.url,
            "--node",
            name,
            "--confirmations",
            "2",
            "--batch-size",
            "200",
            "--batch-seconds",
            "1",
            "--commit-group",
            "50",
            "--rate-limit",
            "1000",
            "--rate-burst",
            "1000",
            "--metrics-port",
            str(self.metrics_port),
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0

    def start(self) -> None:
        log = open(self.log_path, "a")
        log.write("\n=== start %d\n" % (self.starts + 1))
        log.flush()
        self.proc = subprocess.Popen(
            self.args,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, SURGE_CHAIN_KEY=HARDHAT_KEY_0),
        )
        self.starts += 1
        wait_for(
            lambda: "consuming reports from the queue" in self.this_run() or not self.alive(),
            120,
            "gateway %s consuming the queue" % self.name,
        )
        assert self.alive(), self.log()[-3000:]

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def this_run(self) -> str:
        return self.log().rsplit("=== start %d\n" % self.starts, 1)[-1]

    def leads(self) -> bool:
        """Whether this run leads now, from its log (the last of 'leading' / 'lost the leader lock')."""
        text = self.this_run()
        last = text.rfind("leading the cluster")
        return self.alive() and last >= 0 and last > text.rfind("lost the leader lock")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def counter(self, name: str) -> float:
        return metric_value(metrics_text(self.metrics_port), name)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)  # its ingest child follows (PR_SET_PDEATHSIG)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop(self.proc)  # type: ignore[arg-type]


def member_backends(admin: str, dbname: str, member: Member) -> list[int]:
    """Server pids of every connection of ``member``: its store connections (by application_name)
    and its leader lock's (the session holding the advisory lock on its node name)."""
    import psycopg

    with psycopg.connect(admin, autocommit=True) as c:
        rows = c.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname=%s AND application_name=%s "
            "UNION SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid=l.database "
            "WHERE d.datname=%s AND l.locktype='advisory' AND l.classid=%s AND l.objsubid=2 "
            "AND l.objid::bigint = (hashtext(%s)::bigint + 4294967296) %% 4294967296 AND l.granted",
            (dbname, member.app, dbname, NODE_LOCK_CLASS, member.name),
        ).fetchall()
        return [int(r[0]) for r in rows]


def terminate(admin: str, pids: list[int]) -> int:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as c:
        return sum(1 for p in pids if c.execute("SELECT pg_terminate_backend(%s)", (p,)).fetchone()[0])


def stored(store: Store) -> list[Key]:
    return [(str(r[0]), int(r[1]), int(r[2])) for r in store.db.execute("SELECT device_id, boot, seq FROM reports")]


def check_report_by_report(store: Store, chain: HardhatNode, fleet: Fleet) -> dict[str, int]:
    """The guarantees, report by report; returns what was counted."""
    acked = fleet.acked()
    sent = {(d.id, 1, i) for d in fleet.devices for i in range(len(fleet.reports[0]))}
    try:
        wait_for(lambda: acked <= set(stored(store)), 120, "every PUBACKed report stored", interval=0.5)
    except AssertionError:
        missing = sorted(acked - set(stored(store)))
        why = store.db.execute("SELECT reason, count(*) FROM rejections GROUP BY reason").fetchall()
        raise AssertionError(
            "%d of %d PUBACKed reports lost, e.g. %s; rejections by reason: %s"
            % (len(missing), len(acked), missing[:5], why)
        ) from None
    rows = stored(store)
    twice = [k for k, n in collections.Counter(rows).items() if n > 1]
    assert not twice, "stored twice: %s" % twice[:5]
    assert set(rows) <= sent, "a report nobody sent"
    # Published but not PUBACKed (the window in flight when a node died): stored once or not at all.
    wait_for(
        lambda: store.unbatched_count() == 0 and store.unconfirmed_count() == 0,
        180,
        "every report batched and every batch confirmed",
        interval=0.5,
    )
    batches = assert_anchored_once(store, chain.url, len(rows))
    roots = {b.seq: b.root for b in batches}  # equal to the roots on chain (asserted just above)
    contract = str(store.meta("contract:" + chain.url))
    # Each report's proof bundle (report, key, inclusion proof, batch, anchor, gateway signature)
    # verifies offline, against a root the chain holds.
    for device_id, boot, seq in sorted(acked):
        summary = receipts.verify_bundle(receipts.build_bundle(store, device_id, boot, seq))
        assert (summary["device"], summary["boot"], summary["seq"]) == (device_id, boot, seq)
        assert bytes.fromhex(summary["root"]) == roots[summary["batch_seq"]]
        assert summary["contract"].lower() == contract.lower()
    # Publishers resend an unacknowledged window before anything later, so no stored report lacks its
    # predecessor: a gap here would be one recorded because a successor overtook it and never cleared.
    gaps = int(store.db.execute("SELECT count(*) FROM reports WHERE gap=1").fetchone()[0])
    assert gaps == 0, "%d reports still recorded with a gap" % gaps
    return {"acked": len(acked), "stored": len(rows), "batches": len(batches), "gaps": gaps}


@pytest.fixture
def setup(tmp_path: Path, pg_server: Any, pg_url: str, rabbit: RabbitCluster, node: HardhatNode) -> Any:
    fleet = Fleet(rabbit, devices=24, reports=400, window=5, pause_s=0.5)
    store = Store(pg_url)
    for d in fleet.devices:
        store.enroll(d.id, d.key.public, d.board, d.fleet, "test")
    miner = Miner(node)
    leader_node = rabbit.queue_leader()
    assert leader_node is not None
    others = [n.index for n in rabbit.nodes if n.index != leader_node]
    # a speaks MQTT (status, receipts) through the node that will die, b through a survivor;
    # both list the queue's leader first, so both consumers must move.
    members = [
        Member(tmp_path, "a", pg_url, rabbit, leader_node, [leader_node, *others], node),
        Member(tmp_path, "b", pg_url, rabbit, others[0], [leader_node, *reversed(others)], node),
    ]
    try:
        for m in members:
            m.start()
        wait_for(lambda: sum(m.leads() for m in members) == 1, 60, "one leader")
        yield fleet, members, store, leader_node
    finally:
        fleet.stop.set()
        for p in fleet.pubs:
            p.join(30)
        for m in members:
            m.stop()
        miner.stop()
        store.close()
        if not rabbit.nodes[leader_node - 1].process.running:
            rabbit.start_node(leader_node)  # the module's next test gets all three nodes


def test_broker_node_gateway_and_postgres_connections_killed_under_load(
    setup: Any, rabbit: RabbitCluster, node: HardhatNode, pg_server: Any, pg_url: str
) -> None:
    fleet, members, store, queue_leader = setup
    dbname = pg_url.rsplit("/", 1)[1]
    admin = pg_server.url()
    total = len(fleet.devices) * len(fleet.reports[0])

    def accepted() -> int:
        return int(store.db.execute("SELECT count(*) FROM reports").fetchone()[0])

    fleet.start()
    wait_for(lambda: accepted() >= 300, 120, "the cluster accepting under load", interval=0.2)

    # 1. The RabbitMQ node leading the queue: publishers on it fail over, the queue elects a new leader.
    rabbit.kill_node(queue_leader)
    mark = accepted()
    wait_for(lambda: accepted() >= mark + 300, 120, "accepting again after the broker node's death", interval=0.2)
    assert all(m.alive() for m in members), "a gateway died with the broker node"

    # 2. The gateway leading the cluster, SIGKILLed: the other takes the lead; a supervisor restarts it.
    leader = next(m for m in members if m.leads())
    follower = next(m for m in members if m is not leader)
    leader.kill()
    wait_for(follower.leads, 60, "the surviving gateway taking the lead")
    mark = accepted()
    wait_for(lambda: accepted() >= mark + 200, 120, "accepting after the gateway's death", interval=0.2)
    leader.start()

    # 3. Every PostgreSQL connection of the gateway leading now (store connections and leader lock).
    wait_for(lambda: sum(m.leads() for m in members) == 1, 60, "one leader")
    victim = next(m for m in members if m.leads())
    pids = wait_for(
        lambda: (lambda p: p if len(p) >= 3 else None)(member_backends(admin, dbname, victim)),
        60,
        "gateway %s's connections" % victim.name,
    )
    assert terminate(admin, pids) >= 3
    mark = accepted()
    wait_for(lambda: accepted() >= mark + 200, 120, "accepting after the connections were cut", interval=0.2)
    fleet.stop.set()
    fleet.join(60)
    assert len(fleet.acked()) < total, "the publishers ran out of reports before the faults were over"
    assert fleet.reconnects() > 0, "no publisher had to fail over: the broker kill did not land under load"

    fresh = Store(pg_url)  # the test's own connection is fine, but read as an outsider would
    try:
        counts = check_report_by_report(fresh, node, fleet)
    finally:
        fresh.close()
    assert all(m.alive() for m in members), "a gateway crashed"
    logs = "".join(m.log() for m in members)
    assert "lost the report queue" in logs, "no consumer was on the killed node"
    assert "lost the connection to PostgreSQL" in victim.log() and "reconnected to PostgreSQL" in victim.log()
    wait_for(lambda: sum(m.leads() for m in members) == 1, 60, "one leader at the end")
    accepted_total = sum(m.counter("surge_reports_accepted_total") for m in members)
    # The killed run's counter died with it; the live runs never count more than were stored.
    assert accepted_total <= counts["stored"]
    print(
        "cluster faults: %(acked)d PUBACKed, %(stored)d stored, %(batches)d batches, %(gaps)d reports "
        "recorded with a gap" % counts
    )
