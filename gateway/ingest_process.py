"""The ingest stage in a process of its own.

Why a process: ingest is the path that acknowledges reports to the broker,
and its cost per report is what bounds the gateway's throughput
(docs/performance.md).  In the same process as the batcher, the anchorer
(py-evm), receipts and republishing it lost the GIL to them for milliseconds
at a time.  As a child process it has a core's worth of the interpreter to
itself, and the parent (the pipeline) runs at a lower CPU priority, so a
burst of reports is acknowledged first and batched and anchored as soon as
the burst leaves CPU to spare.  The stages hand off through the database, as
they always did, so either process can die at any instant.

Parent and child are tied together: the child dies with its parent
(PR_SET_PDEATHSIG), and the parent stops with an error when the child exits
unexpectedly, so a supervisor (systemd) sees one failed gateway and restarts
both.  The child sends its Prometheus samples and its subscription state to
the parent over a pipe twice a second; the parent serves them on /metrics.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict
from typing import Any, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from gateway.config import GatewayConfig

log = logging.getLogger("surge.gateway")

SNAPSHOT_S = 0.5
PR_SET_PDEATHSIG = 1


class IngestSamples(Collector):
    """The child's metric families as of its last snapshot, for the parent's registry."""

    def __init__(self) -> None:
        self.families: list[Any] = []

    def collect(self) -> Iterator[Metric]:
        for name, kind, doc, samples in self.families:
            m = Metric(name, doc, kind)
            for sname, labels, value in samples:
                m.add_sample(sname, labels, value)
            yield m


class IngestProcess:
    """Parent side: start the child, follow its snapshots, notice when it ends."""

    def __init__(self, cfg: GatewayConfig, gateway_id: str, log_json: bool = False) -> None:
        self.cfg = cfg
        self.gateway_id = gateway_id
        self.log_json = log_json
        self.samples = IngestSamples()
        self.subscribed = threading.Event()
        self.exited = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        env = dict(os.environ, SURGE_GATEWAY_PARENT=str(os.getpid()))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.ingest_process", str(write_fd)],
            stdin=subprocess.PIPE,
            pass_fds=(write_fd,),
            env=env,
        )
        os.close(write_fd)
        assert self.proc.stdin is not None
        # The configuration (with the broker password) goes over stdin, not argv.
        self.proc.stdin.write(
            json.dumps({"cfg": asdict(self.cfg), "gateway_id": self.gateway_id, "log_json": self.log_json}).encode()
            + b"\n"
        )
        self.proc.stdin.close()
        threading.Thread(target=self._follow, args=(read_fd,), name="surge-ingest-follow", daemon=True).start()

    def _follow(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as pipe:
            for line in pipe:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                self.samples.families = msg["metrics"]
                if msg["subscribed"]:
                    self.subscribed.set()
                else:
                    self.subscribed.clear()
        assert self.proc is not None
        self.proc.wait()
        self.subscribed.clear()
        self.exited.set()

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM: the child stops reading, says offline and disconnects."""
        self.stopping = True
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error(
                "ingest process did not stop within %.0f s; killing it (the broker keeps what it did not acknowledge)",
                timeout,
            )
            self.proc.kill()
            self.proc.wait()


def _die_with_parent() -> None:
    # A kill -9 of the gateway must not leave an orphaned ingest consuming the
    # fleet's session.  Set here, in the child, rather than between fork and
    # exec (unsafe in a process with threads, such as the demo's).
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the snapshot writes fail once the parent is gone, and we exit then
    if os.getppid() != int(os.environ.get("SURGE_GATEWAY_PARENT", os.getppid())):
        os._exit(1)  # the parent died before the line above


def _snapshot(ingest: Any, pipe: Any) -> None:
    families = [
        (m.name, m.type, m.documentation, [(s.name, s.labels, s.value) for s in m.samples])
        for m in ingest.metrics.registry.collect()
    ]
    try:
        pipe.write(json.dumps({"subscribed": ingest.connected.is_set(), "metrics": families}).encode() + b"\n")
        pipe.flush()
    except (BrokenPipeError, OSError):
        os._exit(1)  # the parent is gone


def _snapshots(ingest: Any, pipe: Any, stop: threading.Event) -> None:
    while not stop.wait(SNAPSHOT_S):
        _snapshot(ingest, pipe)


def main() -> int:
    from gateway.cli import setup_logging
    from gateway.ingest import Ingest
    from gateway.metrics import IngestMetrics
    from gateway.store import Store

    _die_with_parent()
    fd = int(sys.argv[1])
    msg = json.loads(sys.stdin.readline())
    cfg = GatewayConfig(**msg["cfg"])
    setup_logging(cfg.log_level, msg["log_json"])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda s, f: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us in order
    ingest = Ingest(cfg, Store(cfg.db), IngestMetrics(), msg["gateway_id"])
    pipe = os.fdopen(fd, "wb")
    reporter = threading.Thread(target=_snapshots, args=(ingest, pipe, stop), name="surge-ingest-metrics", daemon=True)
    reporter.start()
    _snapshot(ingest, pipe)
    ingest.run(stop)
    stop.set()
    reporter.join(5)
    _snapshot(ingest, pipe)  # final counts, and subscribed: false
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
