"""A 3-node NATS JetStream cluster on loopback, MQTT listener on every node.

Measured against RabbitMQ in bench/broker_cluster.py; the gateway does not
consume from it (docs/cluster.md says why).  Every node has its own client,
route and MQTT ports, JetStream store directory and server name; routes list
all three nodes.  NATS's MQTT gateway keeps its sessions and QoS 1 state in
JetStream streams with ``stream_replicas`` replicas (3 here).

The reports land in ``REPORTS_STREAM``, an R3 work-queue stream on the NATS
subjects the MQTT topics map to ('/' becomes '.').
"""

from __future__ import annotations

import os
import shutil
import signal
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gateway.cluster.common import ClusterError, NodeProcess, free_ports, listening

REPORTS_STREAM = "SURGE_REPORTS"
REPORT_SUBJECTS = ("surge.v1.*.*.report", "surge.v1.*.*.birth")


def server_binary() -> str | None:
    found = shutil.which("nats-server")
    return found or ("/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK) else None)


@dataclass
class NatsNode:
    index: int
    name: str
    client_port: int
    route_port: int
    mqtt_port: int
    http_port: int
    base: Path
    process: NodeProcess

    @property
    def url(self) -> str:
        return "nats://127.0.0.1:%d" % self.client_port


class NatsCluster:
    engine = "nats"

    def __init__(self, workdir: Path, size: int = 3, start_timeout: float = 60.0) -> None:
        server = server_binary()
        if server is None:
            raise ClusterError(
                "nats-server is not installed: `make system-deps` installs the Debian package nats-server"
            )
        self.workdir = workdir
        self.start_timeout = start_timeout
        self.nodes: list[NatsNode] = []
        for i in range(1, size + 1):
            client, route, mqtt, http = free_ports(4)
            base = workdir / ("node%d" % i)
            name = "n%d" % i
            conf = base / "nats.conf"
            self.nodes.append(
                NatsNode(
                    i,
                    name,
                    client,
                    route,
                    mqtt,
                    http,
                    base,
                    NodeProcess(name, [server, "-c", str(conf)], dict(os.environ), base / "node.log", base),
                )
            )

    def _write_config(self, node: NatsNode) -> None:
        node.base.mkdir(parents=True, exist_ok=True)
        routes = ", ".join('"nats-route://127.0.0.1:%d"' % n.route_port for n in self.nodes if n is not node)
        (node.base / "nats.conf").write_text(
            'server_name: "%s"\n'
            'listen: "127.0.0.1:%d"\n'
            'http: "127.0.0.1:%d"\n'
            'jetstream { store_dir: "%s", max_memory_store: 64MB, max_file_store: 2GB }\n'
            'cluster { name: "surge", listen: "127.0.0.1:%d", routes: [%s] }\n'
            'mqtt { listen: "127.0.0.1:%d", stream_replicas: 3 }\n'
            % (node.name, node.client_port, node.http_port, node.base / "js", node.route_port, routes, node.mqtt_port)
        )

    def start(self) -> None:
        for node in self.nodes:
            self._write_config(node)
        try:
            for node in self.nodes:
                node.process.spawn()
            for node in self.nodes:
                self._wait_node(node)
        except BaseException:
            self.stop()
            raise

    def _wait_node(self, node: NatsNode) -> None:
        # JetStream is usable once the node's /healthz says so (meta leader elected, streams current).
        def healthy() -> bool:
            if not (listening(node.client_port) and listening(node.mqtt_port)):
                return False
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % node.http_port, timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        node.process.wait_until(
            healthy, self.start_timeout, "healthy JetStream (client %d, MQTT %d)" % (node.client_port, node.mqtt_port)
        )

    def start_node(self, index: int) -> None:
        node = self.nodes[index - 1]
        if node.process.running:
            return
        node.process.spawn()
        self._wait_node(node)

    def kill_node(self, index: int) -> None:
        self.nodes[index - 1].process.signal(signal.SIGKILL)

    def stop_node(self, index: int) -> None:
        self.nodes[index - 1].process.signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM every node at once (a node stopping alone waits for its peers), then wait for all."""
        for node in self.nodes:
            node.process.send(signal.SIGTERM)
        for node in self.nodes:
            node.process.wait_exit()

    def running(self) -> list[NatsNode]:
        return [n for n in self.nodes if n.process.running]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def mqtt_ports(self) -> list[int]:
        return [n.mqtt_port for n in self.nodes]
