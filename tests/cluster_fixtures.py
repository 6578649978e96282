"""A real 3-node RabbitMQ cluster for the cluster tests, and a gateway that consumes its quorum queue.

The cluster starts once per test module (about 20 s here) under the test's
temporary directory, on free loopback ports, and stops at the end; a test
that kills a node starts it again before it returns.  Skipped, with the
reason, only where rabbitmq-server is absent and cannot be installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

from gateway.cluster import rabbitmq
from gateway.cluster.load import FailoverPublisher
from gateway.store import Store
from gw_helpers import Device
from gw_process import query


def _ensure_rabbitmq() -> str | None:
    """None when rabbitmq-server is there (installed now if need be), else why not."""
    if rabbitmq.server_binary() and rabbitmq.ctl_binary():
        return None
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "rabbitmq-server"], capture_output=True, timeout=600, check=False
        )
        if rabbitmq.server_binary() and rabbitmq.ctl_binary():
            return None
        return "rabbitmq-server is not installed and `apt-get install rabbitmq-server` failed"
    return "rabbitmq-server is not installed and cannot be installed here (no apt-get as root)"


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rabbitmq.RabbitCluster]:
    why = _ensure_rabbitmq()
    if why:
        pytest.skip(why)
    cluster = rabbitmq.RabbitCluster(tmp_path_factory.mktemp("rabbit"))
    cluster.start()
    try:
        cluster.declare_reports_queue(1)
        yield cluster
    finally:
        cluster.stop()


def enroll_all(db: Path, devices: list[Device]) -> None:
    store = Store(str(db))
    try:
        for d in devices:
            store.enroll(d.id, d.key.public, d.board, d.fleet, "test")
    finally:
        store.close()


def start_cluster_gateway(
    db: Path, cluster: rabbitmq.RabbitCluster, mqtt_node: int, source_nodes: list[int], *extra: str
) -> subprocess.Popen[str]:
    """`surge gateway run` with --source on the given nodes' AMQP ports, MQTT through ``mqtt_node``."""
    log = open(db.with_suffix(".log"), "a")
    source = ",".join(cluster.nodes[i - 1].amqp_url for i in source_nodes)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "gateway",
            "run",
            "--broker",
            cluster.nodes[mqtt_node - 1].mqtt_url,
            "--mqtt-version",
            "3.1.1",
            "--source",
            source,
            "--db",
            str(db),
            "--batch-size",
            "50",
            "--batch-seconds",
            "1",
            "--rate-limit",
            "1000",
            "--rate-burst",
            "1000",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


class Fleet:
    """Devices with signed report chains, one failover publisher each, spread over the cluster's nodes."""

    def __init__(
        self, cluster: rabbitmq.RabbitCluster, devices: int, reports: int, window: int = 10, pause_s: float = 0.0
    ) -> None:
        self.devices = [Device(fleet="cluster") for _ in range(devices)]
        self.reports = [[(d.topic, d.report()) for _ in range(reports)] for d in self.devices]
        self.stop = threading.Event()
        self.pubs = [
            FailoverPublisher(
                cluster.mqtt_ports, k, "dev-%s" % d.id[:16], self.reports[k], self.stop, window=window, pause_s=pause_s
            )
            for k, d in enumerate(self.devices)
        ]

    def start(self) -> None:
        for p in self.pubs:
            p.start()

    def join(self, timeout: float) -> None:
        for p in self.pubs:
            p.join(timeout)
        assert not any(p.is_alive() for p in self.pubs), "publishers did not finish"
        errors = [p.stats.error for p in self.pubs if p.stats.error]
        assert not errors, errors

    def acked(self) -> set[tuple[str, int, int]]:
        """(device, boot, seq) of every report PUBACKed so far (boot 1, seq = index in the chain)."""
        return {(d.id, 1, i) for d, p in zip(self.devices, self.pubs) for i in list(p.stats.acked)}

    def reconnects(self) -> int:
        return sum(p.stats.reconnects for p in self.pubs)


def accepted(db: Path) -> list[tuple[str, int, int]]:
    if not db.exists():
        return []
    return [(r[0], int(r[1]), int(r[2])) for r in query(db, "SELECT device_id, boot, seq FROM reports")]
