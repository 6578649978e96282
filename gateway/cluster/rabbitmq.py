"""A 3-node RabbitMQ cluster on loopback, MQTT plugin on every node.

Each node gets its own node name (unique per cluster, so a shared epmd is
fine), AMQP, MQTT and distribution ports, data directory, config file,
enabled-plugins file and HOME (for the Erlang cookie the nodes and
rabbitmqctl share).  Node 1 boots alone; nodes 2 and 3 find it through
classic peer discovery on their first boot and join it.  A node restarted
after a SIGKILL keeps its data directory and rejoins by itself; a whole
cluster started again on the same directory boots all its nodes at once.

``declare_reports_queue()`` creates the gateway's reports queue
(gateway/source_amqp.py: a quorum queue on all three nodes, bound to
``amq.topic``) before any device publishes, so nothing published before the
first gateway starts is dropped as unroutable.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pika
import pika.exceptions

from gateway.cluster.common import ClusterError, NodeProcess, free_ports, listening
from gateway.source_amqp import REPORTS_QUEUE, declare_reports_queue


_SERVER_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)
_CTL_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmqctl",)


def _find(candidates: tuple[str, ...], name: str) -> str | None:
    # Debian's /usr/sbin wrappers switch to the rabbitmq user and drop our
    # environment (ports, directories) when run as root: prefer the real scripts.
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    return shutil.which(name)


def server_binary() -> str | None:
    return _find(_SERVER_CANDIDATES, "rabbitmq-server")


def ctl_binary() -> str | None:
    return _find(_CTL_CANDIDATES, "rabbitmqctl")


@dataclass
class RabbitNode:
    index: int
    name: str  # Erlang node name, e.g. surge3fa2n1@localhost
    amqp_port: int
    mqtt_port: int
    dist_port: int
    base: Path
    process: NodeProcess

    @property
    def amqp_url(self) -> str:
        return "amqp://127.0.0.1:%d/" % self.amqp_port

    @property
    def mqtt_url(self) -> str:
        return "mqtt://127.0.0.1:%d" % self.mqtt_port


class RabbitCluster:
    """Start, stop and kill the nodes of a 3-node RabbitMQ cluster under ``workdir``."""

    engine = "rabbitmq"

    def __init__(
        self, workdir: Path, size: int = 3, start_timeout: float = 120.0, ports_file: Path | None = None
    ) -> None:
        """``ports_file``: keep node names and ports there, so the same ``workdir`` starts the same nodes again."""
        server, ctl = server_binary(), ctl_binary()
        if server is None or ctl is None:
            raise ClusterError(
                "rabbitmq-server is not installed: `make system-deps` installs the Debian package rabbitmq-server"
            )
        self.server, self.ctl = server, ctl
        self.workdir = workdir
        self.start_timeout = start_timeout
        self.home = workdir / "home"
        self.cookie = secrets.token_hex(16)
        saved = json.loads(ports_file.read_text()) if ports_file is not None and ports_file.exists() else None
        token = saved["token"] if saved else secrets.token_hex(3)
        ports = saved["ports"] if saved else [free_ports(3) for _ in range(size)]
        if ports_file is not None and not saved:
            workdir.mkdir(parents=True, exist_ok=True)
            ports_file.write_text(json.dumps({"token": token, "ports": ports}))
        self.nodes: list[RabbitNode] = []
        for i in range(1, len(ports) + 1):
            amqp, mqtt, dist = ports[i - 1]
            base = workdir / ("node%d" % i)
            name = "surge%sn%d@localhost" % (token, i)
            self.nodes.append(
                RabbitNode(
                    i,
                    name,
                    amqp,
                    mqtt,
                    dist,
                    base,
                    NodeProcess(name, [self.server], self._env(name, amqp, dist, base), base / "node.log", base),
                )
            )

    def _env(self, name: str, amqp: int, dist: int, base: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(
            HOME=str(self.home),
            RABBITMQ_NODENAME=name,
            RABBITMQ_NODE_PORT=str(amqp),
            RABBITMQ_DIST_PORT=str(dist),
            RABBITMQ_BASE=str(base),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(base / "pid"),
            RABBITMQ_LOGS="-",
        )
        return env

    # -- configuration -----------------------------------------------------
    def _write_config(self, node: RabbitNode) -> None:
        node.base.mkdir(parents=True, exist_ok=True)
        lines = [
            "listeners.tcp.default = 127.0.0.1:%d" % node.amqp_port,
            "mqtt.listeners.tcp.default = 127.0.0.1:%d" % node.mqtt_port,
            "mqtt.allow_anonymous = true",
            # Never resume a node that cannot see a majority: a minority must not
            # acknowledge (quorum queues refuse anyway; this covers the rest).
            "cluster_partition_handling = pause_minority",
        ]
        if node.index > 1:  # join node 1 on first boot; later boots rejoin from the data directory
            lines += [
                "cluster_formation.peer_discovery_backend = classic_config",
                "cluster_formation.classic_config.nodes.1 = %s" % self.nodes[0].name,
            ]
        (node.base / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (node.base / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")

    def _write_cookie(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(self.cookie)
            cookie.chmod(0o400)

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        """Start every node and wait until all of them run in one cluster."""
        self._write_cookie()
        for node in self.nodes:
            self._write_config(node)
        try:
            if (self.nodes[0].base / "mnesia" / self.nodes[0].name).exists():
                # A cluster stopped as a whole: each node waits at boot for the peers it last saw
                # running, so they must all boot together.
                self._spawn_and_wait(self.nodes)
            else:
                self._spawn_and_wait([self.nodes[0]])
                self._spawn_and_wait(self.nodes[1:])
            self.wait_clustered()
        except BaseException:
            self.stop()
            raise

    def _spawn_and_wait(self, nodes: list[RabbitNode]) -> None:
        for node in nodes:
            node.process.spawn()
        for node in nodes:
            # The listeners open last in a node's boot: both open means it serves.
            node.process.wait_until(
                lambda: listening(node.amqp_port) and listening(node.mqtt_port),
                self.start_timeout,
                "AMQP and MQTT listeners on ports %d, %d" % (node.amqp_port, node.mqtt_port),
            )

    def start_node(self, index: int) -> None:
        """Start (again) node ``index`` (1-based) and wait until it serves and is back in the cluster."""
        node = self.nodes[index - 1]
        if node.process.running:
            return
        self._spawn_and_wait([node])
        self.wait_clustered()

    def kill_node(self, index: int) -> None:
        """SIGKILL node ``index``: no shutdown, whatever it had not written is gone."""
        self.nodes[index - 1].process.signal(signal.SIGKILL)

    def stop_node(self, index: int) -> None:
        self.nodes[index - 1].process.signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM every node at once (a node stopping alone waits for its peers), then wait for all."""
        for node in self.nodes:
            node.process.send(signal.SIGTERM)
        for node in self.nodes:
            node.process.wait_exit()

    def running(self) -> list[RabbitNode]:
        return [n for n in self.nodes if n.process.running]

    # -- inspection (rabbitmqctl) --------------------------------------------
    def ctl_json(self, node: RabbitNode, *args: str, timeout: float = 60.0) -> object:
        env = dict(self._env(node.name, node.amqp_port, node.dist_port, node.base))
        try:
            out = subprocess.run(
                [self.ctl, "-n", node.name, *args, "--formatter", "json"],
                env=env,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ClusterError(
                "rabbitmqctl %s on %s did not answer within %.0f s" % (" ".join(args), node.name, timeout)
            ) from None
        if out.returncode != 0:
            raise ClusterError(
                "rabbitmqctl %s on %s failed: %s"
                % (" ".join(args), node.name, out.stderr.decode(errors="replace")[-500:])
            )
        return json.loads(out.stdout)

    def wait_clustered(self, timeout: float | None = None) -> None:
        """Every running node sees all the running nodes (bounded)."""
        import time

        deadline = time.monotonic() + (timeout or self.start_timeout)
        want = {n.name for n in self.running()}
        seen: object = None
        while time.monotonic() < deadline:
            try:
                status = self.ctl_json(self.running()[0], "cluster_status")
                seen = status.get("running_nodes") if isinstance(status, dict) else None
                if isinstance(seen, list) and want <= set(seen):
                    return
            except ClusterError as exc:
                seen = str(exc)
            time.sleep(1.0)
        raise ClusterError(
            "the RabbitMQ nodes did not form one cluster within the deadline: want %s, "
            "running_nodes %s" % (sorted(want), seen)
        )

    def declare_reports_queue(self, node: int = 1) -> None:
        """Create the reports queue through node ``node`` (its first leader), replicated on every node."""
        try:
            conn = pika.BlockingConnection(pika.URLParameters(self.nodes[node - 1].amqp_url))
        except pika.exceptions.AMQPError as exc:
            raise ClusterError(
                "cannot reach %s to declare %s: %r" % (self.nodes[node - 1].name, REPORTS_QUEUE, exc)
            ) from None
        try:
            declare_reports_queue(conn.channel(), len(self.nodes))
        finally:
            conn.close()

    def queue_leader(self, queue: str = REPORTS_QUEUE) -> int | None:
        """Index of the node leading quorum queue ``queue`` (None if not known)."""
        rows = self.ctl_json(self.running()[0], "list_queues", "name", "leader")
        for row in rows if isinstance(rows, list) else []:
            if isinstance(row, dict) and row.get("name") == queue:
                for node in self.nodes:
                    if node.name == row.get("leader"):
                        return node.index
        return None

    @property
    def amqp_urls(self) -> list[str]:
        return [n.amqp_url for n in self.nodes]

    @property
    def mqtt_ports(self) -> list[int]:
        return [n.mqtt_port for n in self.nodes]
