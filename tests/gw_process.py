"""Real processes for gateway tests: `surge gateway run`, a hardhat node, a TCP proxy.

Everything here drives the real thing: the gateway is the `surge` command in
a subprocess, the chain is hardhat's node over JSON-RPC (Node.js 22 from
node_modules, see chain_fixtures), and the proxy is a socket relay the test
can cut to make the RPC endpoint unreachable without losing the chain's state
(a stopped hardhat node forgets everything).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
from eth_hash.auto import keccak
from paho.mqtt.enums import CallbackAPIVersion

from broker import Mosquitto, free_port
from chain_fixtures import CHAIN_DIR, node_env
from gw_helpers import Collector, Device

# Hardhat's default dev accounts: publicly known keys, funded only on local
# hardhat nodes.
HARDHAT_KEY_0 = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
HARDHAT_KEY_1 = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``pred`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(interval)


# -- the surge command ---------------------------------------------------------


def surge(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=120, env=env
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def start_gateway(
    db: Path,
    broker: Mosquitto,
    *extra: str,
    env: dict[str, str] | None = None,
    batch_size: int = 5,
    batch_seconds: float = 1,
    confirmations: int = 2,
) -> subprocess.Popen[str]:
    """`surge gateway run` in the background, logging to ``db`` with suffix .log."""
    log = open(db.with_suffix(".log"), "a")
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
            str(batch_size),
            "--batch-seconds",
            str(batch_seconds),
            "--confirmations",
            str(confirmations),
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def gateway_log(db: Path) -> str:
    path = db.with_suffix(".log")
    return path.read_text() if path.exists() else ""


def wait_online(broker: Mosquitto, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Until the gateway announces it is subscribed (retained status 'online')."""
    watch = Collector(broker.port, "surge/v1/_gateway/+/status")
    try:
        ok = watch.wait(lambda: any(p == b"online" for _, p in watch.messages) or proc.poll() is not None, timeout)
        assert ok and proc.poll() is None, "gateway did not come online"
    finally:
        watch.close()


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def status(db: Path) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(surge("gateway", "status", "--db", str(db), "--json").stdout)
    return out


def enroll(db: Path, dev: Device) -> None:
    surge(
        "gateway",
        "enroll",
        "--db",
        str(db),
        "--pubkey",
        dev.key.public.hex(),
        "--board",
        dev.board,
        "--fleet",
        dev.fleet,
    )


def query(db: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the gateway's database directly (WAL: safe while it runs)."""
    con = sqlite3.connect(str(db), timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def metrics_text(port: int) -> str:
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as resp:
        return str(resp.read().decode())


def metric_value(text: str, name: str) -> float:
    """Sum of the samples called ``name`` (any labels) in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- MQTT publisher that waits for the broker's PUBACK -------------------------


class AckPublisher:
    """QoS 1 publisher; ``send`` returns once the broker acknowledged (PUBACK)."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ackpub-%d" % time.monotonic_ns())
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes, timeout: float = 10.0) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout)
        assert info.is_published(), "broker did not acknowledge %s" % topic

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# -- hardhat node over JSON-RPC --------------------------------------------------


def rpc(url: str, method: str, params: list[Any] | None = None, timeout: float = 10) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    req = urllib.request.Request(url, body.encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        reply = json.load(resp)
    assert "error" not in reply, reply
    return reply["result"]


class HardhatNode:
    """`npx hardhat node` on a free loopback port, in its own process group."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.proc = subprocess.Popen(
            ["npx", "hardhat", "node", "--hostname", "127.0.0.1", "--port", str(self.port)],
            cwd=CHAIN_DIR / "hardhat",
            env=node_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError("hardhat node exited with %s: %s" % (self.proc.returncode, err[-2000:]))
            try:
                rpc(self.url, "eth_chainId", timeout=2)
                return
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError("hardhat node did not answer within %.0fs" % timeout)

    def mine(self, blocks: int = 1) -> None:
        for _ in range(blocks):
            rpc(self.url, "evm_mine")

    def head(self) -> int:
        return int(rpc(self.url, "eth_blockNumber"), 16)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


class Miner:
    """Mines one block every ``interval`` seconds: block time for a dev chain."""

    def __init__(self, node: HardhatNode, interval: float = 0.2) -> None:
        self.node = node
        self.interval = interval
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                self.node.mine(1)
            except OSError:
                pass  # node going away at teardown

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(5)


# -- a TCP relay the test can cut ---------------------------------------------------


class TcpProxy:
    """Relays 127.0.0.1:port to a target; ``cut()`` makes it refuse to relay.

    While cut, every open connection is closed and new ones are accepted and
    closed at once: to an HTTP client the endpoint is down, while the node
    behind keeps its state.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.url = "http://127.0.0.1:%d" % self.port
        self.up = True
        self.lock = threading.Lock()
        self.conns: set[socket.socket] = set()
        self.refused = 0
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if not self.up:
                    self.refused += 1
                    client.close()
                    continue
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                except OSError:
                    client.close()
                    continue
                self.conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            with self.lock:
                self.conns.discard(src)
                self.conns.discard(dst)

    def cut(self) -> None:
        with self.lock:
            self.up = False
            conns = list(self.conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def restore(self) -> None:
        with self.lock:
            self.up = True

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


def processes_under(workdir: Path) -> list[str]:
    """Command lines of live processes that mention the demo's directory."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path("/proc/%s/cmdline" % pid).read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(workdir) in cmd and "pytest" not in cmd:
            found.append(cmd)
    return found


# The SurgeAnchor event a batch's anchor emits (topics[2]: the batch seq; data: its root first).
ANCHORED = "0x" + keccak(b"Anchored(address,uint64,bytes32,uint64)").hex()


def assert_anchored_once(store: Any, chain_url: str, reports: int) -> list[Any]:
    """Batches 1..n hold ``reports`` reports at distinct leaves, each with one confirmed anchor and one
    Anchored event on the chain, root for root; returns the batches."""
    batches = store.batches()
    assert [b.seq for b in batches] == list(range(1, len(batches) + 1)), "one batch per seq, none skipped"
    assert sum(b.size for b in batches) == reports
    placed = store.db.execute("SELECT batch_seq, leaf_index FROM reports").fetchall()
    assert len({(int(p[0]), int(p[1])) for p in placed}) == reports, "two reports at one leaf"
    for b in batches:
        assert len([a for a in store.anchors(b.seq) if a.state == "confirmed"]) == 1, b
    contract = store.meta("contract:" + chain_url)
    assert contract is not None
    logs = rpc(
        chain_url, "eth_getLogs", [{"fromBlock": "0x0", "toBlock": "latest", "address": contract, "topics": [ANCHORED]}]
    )
    on_chain = collections.Counter(int(e["topics"][2], 16) for e in logs)
    assert on_chain == collections.Counter(b.seq for b in batches), "a batch anchored twice or never"
    roots = {int(e["topics"][2], 16): bytes.fromhex(e["data"][2:66]) for e in logs}
    assert all(roots[b.seq] == b.root for b in batches), "a root on chain differs from its batch"
    return list(batches)
