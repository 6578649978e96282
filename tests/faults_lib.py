"""Fault scenarios shared by the CI fault tests (tests/test_faults.py, few
iterations) and `make soak` (bench/soak.py, many): each runs real processes,
injects one kind of fault N times under load, then checks the end state and
returns its figures (faults injected, reports sent, stored, anchored, lost,
duplicated).  The checks here are the guarantees of docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from web3 import Web3

from surge_protocol import claims as C
from broker import Mosquitto
from gw_helpers import Collector, Device
from gw_process import (
    HARDHAT_KEY_0,
    AckPublisher,
    HardhatNode,
    enroll,
    gateway_log,
    query,
    start_gateway,
    stop,
    wait_for,
    wait_online,
)


@dataclass
class Figures:
    scenario: str
    faults_injected: int = 0
    reports_sent: int = 0  # acknowledged by the broker (PUBACK to the sender)
    reports_stored: int = 0
    reports_anchored: int = 0  # in a batch whose root is on chain
    lost: int = 0
    duplicated: int = 0
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# -- sustained load from many devices -----------------------------------------------


class Load:
    """Publishes reports round-robin from ``devices`` as fast as the broker acknowledges them
    (with ``pause`` between), recording each acknowledged report."""

    def __init__(self, port: int, devices: list[Device], pause: float = 0.005) -> None:
        self.pub = AckPublisher(port)
        self.devices = devices
        self.pause = pause
        self.sent: dict[tuple[str, int], bytes] = {}
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Load":
        self.thread.start()
        return self

    def _run(self) -> None:
        i = 0
        try:
            while not self.stop_event.is_set():
                d = self.devices[i % len(self.devices)]
                i += 1
                data = d.report()
                self.pub.send(d.topic, data)
                self.sent[(d.id, d.seq - 1)] = data
                time.sleep(self.pause)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def stop(self) -> dict[tuple[str, int], bytes]:
        self.stop_event.set()
        self.thread.join(30)
        self.pub.close()
        if self.error is not None:
            raise AssertionError("load generator failed: %r" % (self.error,))
        return dict(self.sent)


def _confirmed_receipts(watch: Collector) -> set[tuple[str, int]]:
    got = set()
    for _, p in watch.of_kind("receipt"):
        r = json.loads(p)
        if r.get("status") == "confirmed":
            got.add((r["device"], r["seq"]))
    return got


def check_anchored_once(db: Path, chain_url: str, key_hex: str = HARDHAT_KEY_0) -> int:
    """Every batch anchored exactly once on chain with its stored root; returns anchored reports."""
    from gateway.chain import ChainKey, open_chain

    contract = query(db, "SELECT value FROM meta WHERE key=?", ("contract:" + chain_url,))[0][0]
    chain = open_chain(chain_url, key=ChainKey.from_hex(key_hex), contract=contract)
    batches = query(db, "SELECT seq, root, size FROM batches ORDER BY seq")
    assert [b[0] for b in batches] == list(range(1, len(batches) + 1)), "batch numbers are not 1..n"
    assert chain.last_seq() == len(batches), (chain.last_seq(), len(batches))
    # One Anchored event per batch number: the contract refuses a second one, and the logs agree.
    logs = chain.web3.eth.get_logs(
        {"address": Web3.to_checksum_address(chain.contract_address), "fromBlock": 0, "toBlock": "latest"}
    )
    per_seq: dict[int, int] = {}
    for lg in logs:
        if len(lg["topics"]) == 3:
            seq = int.from_bytes(bytes(lg["topics"][2]), "big")
            per_seq[seq] = per_seq.get(seq, 0) + 1
    anchored = 0
    for seq, root, size in batches:
        assert chain.root_of(seq) == bytes(root) and chain.size_of(seq) == size, "batch %d differs on chain" % seq
        assert per_seq.get(seq) == 1, "batch %d has %s Anchored events" % (seq, per_seq.get(seq))
        confirmed = query(db, "SELECT tx_hash FROM anchors WHERE batch_seq=? AND state='confirmed'", (seq,))
        assert len(confirmed) == 1 and chain.anchor_tx(seq) == bytes(confirmed[0][0])
        anchored += size
    return anchored


def compare_stored(db: Path, sent: dict[tuple[str, int], bytes], fig: Figures) -> dict[tuple[str, int], bytes]:
    rows = query(db, "SELECT device_id, seq, cose FROM reports")
    stored: dict[tuple[str, int], bytes] = {}
    for dev, seq, cose in rows:
        if (dev, seq) in stored:
            fig.duplicated += 1
        stored[(dev, seq)] = bytes(cose)
    fig.reports_stored = len(stored)
    fig.lost = sum(1 for k, v in sent.items() if stored.get(k) != v)
    # A leaf in two batches would be anchored twice.
    leaves = query(db, "SELECT COUNT(*), COUNT(DISTINCT cose) FROM reports WHERE batch_seq IS NOT NULL")[0]
    fig.duplicated += leaves[0] - leaves[1]
    return stored


# -- 1. gateway kill -9 at random moments -----------------------------------------------


def gateway_random_kills(
    tmp: Path,
    broker: Mosquitto,
    node: HardhatNode,
    kills: int,
    seed: int = 1,
    devices: int = 8,
    min_s: float = 0.3,
    max_s: float = 3.0,
    batch_size: int = 25,
    pause: float = 0.005,
) -> Figures:
    """Kill -9 the gateway ``kills`` times at random moments under sustained load;
    the hardhat chain outlives it.  Every report the broker acknowledged must end
    up stored once and anchored once, with a confirmed receipt."""
    fig = Figures("gateway_kill9_random")
    t0 = time.monotonic()
    rng = random.Random(seed)
    db = tmp / "gw.db"
    devs = [Device(board="rpi-4") for _ in range(devices)]
    for d in devs:
        enroll(db, d)
    env = dict(os.environ, SURGE_CHAIN_KEY=HARDHAT_KEY_0)
    args = ("--chain", node.url, "--rate-limit", "1000", "--rate-burst", "1000", "--anchor-timeout", "5")
    watch = Collector(broker.port, "surge/v1/+/+/receipt")
    gw = start_gateway(db, broker, *args, env=env, batch_size=batch_size, batch_seconds=0.5)
    load = None
    try:
        wait_online(broker, gw)  # the persistent session exists before the first report
        load = Load(broker.port, devs, pause).start()
        kill_points: list[float] = []
        for _ in range(kills):
            delay = rng.uniform(min_s, max_s)
            kill_points.append(round(delay, 3))
            time.sleep(delay)
            if gw.poll() is None:
                gw.send_signal(signal.SIGKILL)
                gw.wait(10)
                fig.faults_injected += 1
            else:  # died on its own: that is a finding, not a fault we injected
                raise AssertionError("gateway exited by itself (%s): %s" % (gw.returncode, gateway_log(db)[-3000:]))
            gw = start_gateway(db, broker, *args, env=env, batch_size=batch_size, batch_seconds=0.5)
        sent = load.stop()
        load = None
        fig.reports_sent = len(sent)
        fig.notes["kill_after_start_s"] = {"min": min(kill_points), "max": max(kill_points)} if kill_points else {}

        def settled() -> bool:
            stored = query(db, "SELECT COUNT(*) FROM reports")[0][0]
            pending = query(db, "SELECT COUNT(*) FROM batches WHERE state != 'receipted'")[0][0]
            unbatched = query(db, "SELECT COUNT(*) FROM reports WHERE batch_seq IS NULL")[0][0]
            return bool(stored >= len(sent) and pending == 0 and unbatched == 0)

        wait_for(settled, 120 + len(sent) / 50, "every acknowledged report stored, batched and receipted", 0.5)
        wait_for(lambda: set(sent) <= _confirmed_receipts(watch), 60, "a confirmed receipt for every report")
        compare_stored(db, sent, fig)
        fig.reports_anchored = check_anchored_once(db, node.url)
        fig.notes["batches"] = query(db, "SELECT COUNT(*) FROM batches")[0][0]
        fig.notes["anchor_attempts_dropped"] = query(db, "SELECT COUNT(*) FROM anchors WHERE state='dropped'")[0][0]
        assert gw.poll() is None, gateway_log(db)[-3000:]
    finally:
        if load is not None:
            load.stop_event.set()
        watch.close()
        stop(gw)
    fig.seconds = round(time.monotonic() - t0, 1)
    return fig


# -- 2. broker kill -9 with real agents ----------------------------------------------------


def _write_agent_config(tmp: Path, name: str, port: int, **over: Any) -> tuple[Path, Any]:
    from test_agent_harness import write_config

    return write_config(tmp, port, name=name, bw_probe_bytes=0, **over)


def broker_kills_with_agents(
    tmp: Path,
    broker: Mosquitto,
    kills: int,
    agents: int = 3,
    reports: int = 40,
    seed: int = 2,
    down_s: tuple[float, float] = (0.2, 1.5),
    storm: bool = False,
) -> Figures:
    """SIGKILL the broker ``kills`` times while `surge agent run` agents report to a
    gateway; each time it comes back on the same port from its persistence file.
    Every report of every agent must be accepted once, in order, with no gap.

    Mosquitto acknowledges a QoS 1 PUBLISH before anything reaches its disk and
    saves its in-memory database only every ``autosave_interval``; a report it
    queued for an offline gateway dies with it.  So, by default, the broker is
    killed again only once the gateway is back and caught up and an autosave has
    passed (a crash, not a crash storm).  ``storm=True`` kills at random moments
    regardless: the soak reports what that loses (docs/reliability.md)."""
    from test_agent_harness import start_agent

    fig = Figures("broker_kill9_storm" if storm else "broker_kill9_with_agents")
    t0 = time.monotonic()
    rng = random.Random(seed)
    db = tmp / "gw.db"
    cfgs = []
    for i in range(agents):
        cfg, key = _write_agent_config(tmp, "agent%d" % i, broker.port, interval=0.2, count=0)
        from gateway.store import Store

        Store(db).enroll(key.device_id, key.public, "linux-generic", "test", "")
        cfgs.append((cfg, key))
    gw = start_gateway(db, broker, "--rate-limit", "100", "--rate-burst", "200", batch_size=50, batch_seconds=1)
    procs: list[subprocess.Popen[str]] = []
    try:
        wait_online(broker, gw)
        time.sleep(1.5)  # the gateway's subscription reaches the broker's persistence file (autosave 1 s)
        procs = [start_agent(cfg, reports) for cfg, _ in cfgs]
        deadline = time.monotonic() + 30 + 5 * kills
        fig.notes["storm"] = storm
        for _ in range(kills):
            time.sleep(rng.uniform(0.5, 2.0))
            broker.stop(kill=True)
            fig.faults_injected += 1
            time.sleep(rng.uniform(*down_s))
            broker.start()
            if not storm and any(p.poll() is None for p in procs):
                # The gateway is back and new reports flow through it; then one autosave.
                n = query(db, "SELECT COUNT(*) FROM reports")[0][0]
                try:
                    wait_for(
                        lambda: (
                            query(db, "SELECT COUNT(*) FROM reports")[0][0] > n
                            or all(p.poll() is not None for p in procs)
                        ),
                        40,
                        "reports flowing again",
                        0.1,
                    )
                except AssertionError:
                    pass
                time.sleep(2.5)
        for p in procs:
            p.wait(max(5.0, deadline - time.monotonic()) + 60)
        outs = [p.stdout.read() if p.stdout else "" for p in procs]
        for p, out in zip(procs, outs):
            assert p.returncode == 0, out[-3000:]
        fig.reports_sent = agents * reports
        ids = [key.device_id for _, key in cfgs]

        def all_in() -> bool:
            return bool(query(db, "SELECT COUNT(*) FROM reports")[0][0] >= fig.reports_sent)

        try:
            wait_for(all_in, 60, "every agent report at the gateway", 0.5)
        except AssertionError:
            pass  # counted as lost below
        for dev in ids:
            rows = query(db, "SELECT boot, seq, gap, cose FROM reports WHERE device_id=? ORDER BY id", (dev,))
            seqs = [r[1] for r in rows]
            fig.reports_stored += len(rows)
            fig.lost += len(set(range(1, reports + 1)) - set(seqs))
            fig.duplicated += len(seqs) - len(set(seqs))
            fig.notes.setdefault("gaps", 0)
            fig.notes["gaps"] += sum(1 for r in rows if r[2])
            fig.notes.setdefault("out_of_order", 0)
            fig.notes["out_of_order"] += int(seqs != sorted(seqs))
        fig.notes["agent_reconnects"] = sum(o.count("connection lost") for o in outs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        if broker.proc is None:
            broker.start()
        stop(gw)
    fig.seconds = round(time.monotonic() - t0, 1)
    return fig


# -- 3. agent power cut during outbox writes --------------------------------------------------


def agent_power_cuts(tmp: Path, broker: Mosquitto, cuts: int, seed: int = 3) -> Figures:
    """kill -9 `surge agent run` at random moments while it writes reports into its
    outbox (broker down, so the outbox only grows), ``cuts`` times; after every cut
    the outbox and state must load and every queued file must be a whole, valid
    report.  Then the broker comes back and everything queued is delivered in order."""
    from agent.outbox import Outbox
    from agent.state import State
    from test_agent_harness import Subscriber, report_chain, run_agent, start_agent, verify

    fig = Figures("agent_power_cut_outbox")
    t0 = time.monotonic()
    rng = random.Random(seed)
    cfg, key = _write_agent_config(tmp, "agent", broker.port, interval=0.1, outbox={"max_entries": 100000})
    outdir = tmp / "agent-outbox"
    statefile = tmp / "agent-state" / "state.json"
    sub = Subscriber(broker.port).start()
    n = sub.subacks
    broker.stop()
    torn = 0
    try:
        for _ in range(cuts):
            proc = start_agent(cfg)
            # Python start-up takes ~0.3-0.6 s; cut anywhere from there into the reporting.
            time.sleep(rng.uniform(0.3, 1.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            if proc.stdout:
                proc.stdout.close()
            fig.faults_injected += 1
            torn += sum(1 for p in outdir.iterdir() if p.name.endswith(".tmp")) if outdir.exists() else 0
            # Readable after the cut: the device code's own loaders, then each file verified.
            box = Outbox(str(outdir), 100000)
            st = State(str(statefile))
            st.load()
            for s in range(box.lo, box.hi + 1):
                data = (outdir / ("%016d.rep" % s)).read_bytes()
                claims = verify(data, key.public)
                assert claims[C.SURGE][C.SEQ] == s, "file %d holds seq %d" % (s, claims[C.SURGE][C.SEQ])
            assert not any(p.name.endswith(".tmp") for p in outdir.iterdir()), "leftover .tmp after open"
        queued = sorted(int(p.name[:16]) for p in outdir.iterdir())
        fig.notes["queued_after_cuts"] = len(queued)
        fig.notes["unfinished_writes_found"] = torn
        broker.start()
        sub.resubscribed(n)
        done = run_agent(cfg, 2, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        sub.wait(lambda: len({m.payload for m in sub.of("report")}) >= len(queued) + 2, 60, "every queued report")
        chain = report_chain(sub.of("report"), key.public)  # asserts no gap, no reorder, prev links intact
        seqs = [c[C.SURGE][C.SEQ] for c in chain]
        fig.reports_sent = seqs[-1] if seqs else 0
        fig.reports_stored = len(seqs)
        fig.lost = len(set(range(1, fig.reports_sent + 1)) - set(seqs))
        fig.duplicated = 0
        fig.notes["boots"] = len({c[C.BOOTCOUNT] for c in chain})
        assert set(queued) <= set(seqs)
    finally:
        sub.stop()
        if broker.proc is None:
            broker.start()
    fig.seconds = round(time.monotonic() - t0, 1)
    return fig


# -- 4. gateway disk full -------------------------------------------------------------------------


class SmallDisk:
    """A size-limited tmpfs (root) for the gateway's database; ``fill`` and ``free``."""

    def __init__(self, path: Path, size_kb: int = 4096) -> None:
        self.path = path
        self.size_kb = size_kb
        self.mounted = False
        self.filler = path / "filler"

    def __enter__(self) -> "SmallDisk":
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=%dk" % self.size_kb, "surge-test", str(self.path)],
            check=True,
            capture_output=True,
        )
        self.mounted = True
        return self

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass  # ENOSPC: full
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def __exit__(self, *exc: Any) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def can_mount_tmpfs() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and os.path.exists("/bin/mount")


def gateway_disk_full(tmp: Path, broker: Mosquitto, reports_each: int = 30) -> Figures:
    """The gateway's database lives on a small tmpfs that is filled up under it.
    It must stop acknowledging (the broker keeps the reports), log why once,
    resume by itself when space returns, and also after a kill -9 while full."""
    from gw_process import metric_value, metrics_text
    from broker import free_port

    fig = Figures("gateway_disk_full")
    fig.notes["method"] = "tmpfs"
    t0 = time.monotonic()
    with SmallDisk(tmp / "small") as disk:
        db = disk.path / "gw.db"
        devs = [Device(board="rpi-4") for _ in range(3)]
        for d in devs:
            enroll(db, d)
        mport = free_port()
        args = ("--rate-limit", "1000", "--rate-burst", "1000", "--metrics-port", str(mport))
        logdir = tmp / "logs"
        logdir.mkdir(exist_ok=True)
        gw = _gateway_logging_to(logdir / "gw.log", db, broker, *args)
        pub = AckPublisher(broker.port)
        sent: dict[tuple[str, int], bytes] = {}

        def send(n: int) -> None:
            for i in range(n):
                d = devs[i % len(devs)]
                data = d.report()
                pub.send(d.topic, data)
                sent[(d.id, d.seq - 1)] = data

        def stored() -> int:
            return int(query(db, "SELECT COUNT(*) FROM reports")[0][0])

        try:
            wait_online(broker, gw)
            send(5)
            wait_for(lambda: stored() == 5, 30, "first reports stored")
            # Phase 1: disk fills, reports keep coming, space comes back.
            disk.fill()
            fig.faults_injected += 1
            before = stored()
            send(reports_each)
            wait_for(
                lambda: metric_value(metrics_text(mport), "surge_commit_errors_total") >= 4,
                30,
                "several failed commits while the disk is full",
            )
            assert stored() == before, "a commit succeeded on a full disk?"
            log = (logdir / "gw.log").read_text()
            assert log.count("cannot store") == 1, log[-3000:]
            assert "not acknowledging" in log
            disk.free()
            wait_for(lambda: stored() == len(sent), 30, "every report stored once space came back")
            # Logged just after that commit: waited for, not read at once (a race under load).
            wait_for(
                lambda: "resumed acknowledging" in (logdir / "gw.log").read_text(), 10, "the resumed-acknowledging log"
            )
            # Phase 2: full again, and the gateway is killed while it holds unacknowledged reports:
            # only the broker has them now.
            disk.fill()
            fig.faults_injected += 1
            before = stored()
            send(reports_each)
            wait_for(
                lambda: metric_value(metrics_text(mport), "surge_commit_errors_total") >= 1, 30, "failed commits again"
            )
            gw.send_signal(signal.SIGKILL)
            gw.wait(10)
            fig.faults_injected += 1
            assert stored() == before
            disk.free()
            gw = _gateway_logging_to(logdir / "gw.log", db, broker, *args)
            wait_for(lambda: stored() == len(sent), 60, "every report stored after the restart")
            fig.reports_sent = len(sent)
            compare_stored(db, sent, fig)
            fig.reports_anchored = int(
                query(db, "SELECT COALESCE(SUM(size), 0) FROM batches WHERE state IN ('confirmed', 'receipted')")[0][0]
            )
            text = (logdir / "gw.log").read_text()
            fig.notes["log_lines_about_full_disk"] = text.count("cannot store")
            # Once per episode, not once per pass (two episodes here).
            assert text.count("cannot store") == 2 and text.count("batcher/anchorer pass failed") <= 2, text[-3000:]
        finally:
            pub.close()
            stop(gw)
            disk.free()
    fig.seconds = round(time.monotonic() - t0, 1)
    return fig


def _gateway_logging_to(
    log: Path, db: Path, broker: Mosquitto, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Like gw_process.start_gateway, but the log goes elsewhere (the db's disk is the one that fills)."""
    import sys

    f = open(log, "a")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "gateway",
            "run",
            "--broker",
            broker.url,
            "--db",
            str(db),
            "--batch-size",
            "10",
            "--batch-seconds",
            "0.5",
            *extra,
        ],
        stdout=f,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def gateway_page_limit(tmp: Path, broker: Mosquitto, reports: int = 400) -> Figures:
    """The fallback of gateway_disk_full without root: the gateway's database is capped
    with SQLite's max_page_count (SURGE_DB_MAX_PAGES, gateway/faults.py), reports
    flow until commits fail; the gateway must stop acknowledging and say so once;
    killed and restarted without the cap ("space returned"), it stores everything."""
    from gw_process import metric_value, metrics_text
    from broker import free_port

    fig = Figures("gateway_disk_full")
    fig.notes["method"] = "sqlite max_page_count"
    t0 = time.monotonic()
    db = tmp / "gw.db"
    devs = [Device(board="rpi-4") for _ in range(4)]
    for d in devs:
        enroll(db, d)
    pages = int(query(db, "PRAGMA page_count")[0][0])
    mport = free_port()
    args = ("--rate-limit", "1000", "--rate-burst", "1000", "--metrics-port", str(mport), "--no-republish")
    log = tmp / "gw.log"
    gw = _gateway_logging_to(log, db, broker, *args, env=dict(os.environ, SURGE_DB_MAX_PAGES=str(pages + 8)))
    pub = AckPublisher(broker.port)
    sent: dict[tuple[str, int], bytes] = {}
    try:
        wait_online(broker, gw)
        fig.faults_injected += 1
        for i in range(reports):
            d = devs[i % len(devs)]
            data = d.report()
            pub.send(d.topic, data)
            sent[(d.id, d.seq - 1)] = data
        wait_for(
            lambda: metric_value(metrics_text(mport), "surge_commit_errors_total") >= 3,
            30,
            "commits failing on the capped database",
        )
        stored_full = int(query(db, "SELECT COUNT(*) FROM reports")[0][0])
        assert stored_full < len(sent), "the cap never bit"
        text = log.read_text()
        assert text.count("cannot store") == 1 and "not acknowledging" in text, text[-3000:]
        gw.send_signal(signal.SIGKILL)
        gw.wait(10)
        fig.faults_injected += 1
        gw = _gateway_logging_to(log, db, broker, *args)
        wait_for(
            lambda: int(query(db, "SELECT COUNT(*) FROM reports")[0][0]) == len(sent),
            60,
            "every report stored once the cap is gone",
        )
        fig.reports_sent = len(sent)
        fig.notes["stored_while_full"] = stored_full
        compare_stored(db, sent, fig)
    finally:
        pub.close()
        stop(gw)
    fig.seconds = round(time.monotonic() - t0, 1)
    return fig


Scenario = Callable[..., Figures]
