"""Probe chunks off the broker, timed where they are read (the I/O edge of gateway/probe_check.py).

A thread of the ingest process with an MQTT connection of its own,
subscribed at QoS 0 to every device's `probe` topic.  Why not the ingest
connection: that one stops reading while a group of reports is verified and
committed (tens of ms with fsync), and a chunk read after such a pause would
be timed late, making an honest device look slow; and a flood of probe
chunks must never queue in front of other devices' reports.  Here nothing
but the read and the (microseconds per chunk) check runs between a chunk's
arrival and its timestamp.

The subscription is not shared (`$share`) even when ingest is: all chunks of a
run must reach one tracker, so every gateway of a shared group tracks every
run and the one that accepts the report claims it.  Probes are ephemeral
(QoS 0, unsigned): nothing of a run is stored until its report is accepted,
when ingest writes the run's result with the report (gateway/ingest.py).
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from gateway.config import GatewayConfig
from gateway.metrics import ProbeMetrics
from gateway.mqtt_client import Connection, MQTTError, Refused, backoff_delays
from gateway.probe_check import CHECKED, ProbeTracker, RunResult
from gateway.store import Store
from gateway.verify import Rejection, parse_topic
from surge_protocol import topics

log = logging.getLogger("surge.gateway.probes")

FLUSH_S = 1.0  # counts to metrics and the database, runs swept, this often
MAX_READS = 64  # socket reads timed before their chunks are checked
RETRY_S = 10.0  # a resolved run waits this long for ingest to commit its pending row
UNKNOWN_CACHE = 10_000  # device ids found not enrolled, remembered until the registry changes


class ProbeListener:
    """Reads probe chunks into a :class:`ProbeTracker`; ingest claims runs through :meth:`claim`."""

    def __init__(self, cfg: GatewayConfig, db: str, metrics: ProbeMetrics, gateway_id: str) -> None:
        self.cfg = cfg
        self.db = db
        self.metrics = metrics
        self.tracker = ProbeTracker(cfg.probe_rate_per_s, cfg.probe_burst, cfg.max_probe_bytes)
        self.lock = threading.Lock()  # the tracker is shared with the ingest thread (claim)
        self.unknown: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.registry_version: str | None = None
        self.store: Store | None = None  # opened on the listener thread (one connection per thread)
        host, port, tls = cfg.broker_host_port()
        self.host, self.port = host, port
        self.conn = Connection(
            host,
            port,
            cfg.client_id(gateway_id, "probe"),
            version=cfg.mqtt_version,
            username=cfg.username,
            password=cfg.password,
            tls=tls,
            ca_file=cfg.broker_ca,
            keepalive=30,
            clean_start=True,
        )
        # (first tried, device, boot, result) of resolved runs whose pending row was not there yet
        self.unstored: list[tuple[float, str, int, RunResult]] = []
        self.subscribed = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, stop: threading.Event) -> None:
        self.thread = threading.Thread(target=self.run, args=(stop,), name="surge-probes", daemon=True)
        self.thread.start()

    def claim(self, device_id: str, fleet: str, boot: int, seq: int, report_at: float) -> RunResult | None:
        """The checked run (or its failure, or PENDING) for an accepted report; ``report_at`` on
        time.monotonic()."""
        with self.lock:
            return self.tracker.claim(device_id, fleet, seq, report_at, boot)

    def _store_resolved(self) -> None:
        """Runs that were still arriving when their report was accepted: their outcome, now known.

        Ingest writes their probe_runs row as 'pending' with the report; the
        attestation stage waits for this update (gateway/attest.py).  The
        outcome can be known here before ingest has committed that row, so an
        update that finds no pending row is tried again for a while.
        """
        assert self.store is not None
        with self.lock:
            done, self.tracker.resolved = self.tracker.resolved, []
        now = time.monotonic()
        todo = self.unstored + [(now, dev, boot, r) for dev, boot, r in done]
        self.unstored = []
        try:
            with self.store._tx():
                for first, dev, boot, r in todo:
                    cur = self.store.db.execute(
                        "UPDATE probe_runs SET outcome=?, bw_up=?, bytes=?, chunks=?, elapsed_us=? "
                        "WHERE device_id=? AND boot=? AND seq=? AND outcome='pending'",
                        (r.outcome, r.bw_up, r.bytes, r.chunks, r.elapsed_us, dev, boot, r.seq),
                    )
                    if cur.rowcount == 0 and now - first < RETRY_S:
                        self.unstored.append((first, dev, boot, r))
        except Exception as exc:  # the attestation then gives up waiting and counts the run out of order
            log.warning("cannot store %d probe run results: %s", len(todo), exc)

    # -- the thread ------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        self.store = Store(self.db)
        delays = backoff_delays(1, 30)
        while not stop.is_set():
            try:
                self._session(stop)
            except Refused as exc:
                log.error("probe listener: %s; bandwidth is not measured until this is fixed", exc)
            except (MQTTError, OSError) as exc:
                if self.subscribed.is_set():
                    log.warning("probe listener lost the broker at %s:%d (%s); reconnecting", self.host, self.port, exc)
            except Exception:  # a bug here must not take ingest down; runs in progress are lost
                log.exception("probe listener failed; restarting it")
            finally:
                if self.subscribed.is_set():
                    delays = backoff_delays(1, 30)
                self.subscribed.clear()
                self.metrics.connected.set(0)
                self.conn.close()
                self._flush()
            stop.wait(next(delays))

    def _session(self, stop: threading.Event) -> None:
        conn = self.conn
        conn.connect()
        conn.subscribe([(topics.every_device("probe"), 0)])
        self.subscribed.set()
        self.metrics.connected.set(1)
        next_flush = time.monotonic() + FLUSH_S
        next_retry = 0.0
        while not stop.is_set():
            # Each read is timed as it returns: every message of it arrived by then
            # (one read holds what the kernel had buffered).  While data keeps
            # coming, read again before checking any chunk, so the check's CPU
            # (tens of us a chunk, bench group 8) does not delay the next read
            # and make a run look slower than it arrived.
            reads = [(conn.poll(0.2), time.monotonic())]
            while reads[-1][0] and len(reads) < MAX_READS:
                reads.append((conn.poll(0.0), time.monotonic()))
            for msgs, at in reads:
                for msg in msgs:
                    self._chunk(msg.topic, msg.payload, at)
            now = reads[-1][1]
            if self.tracker.resolved or (self.unstored and now >= next_retry):
                next_retry = now + 0.05
                self._store_resolved()
            if now >= next_flush:
                next_flush = now + FLUSH_S
                self._flush()
        conn.disconnect()

    def _chunk(self, topic: str, payload: bytes, now: float) -> None:
        parsed = parse_topic(topic)
        tracker = self.tracker
        if isinstance(parsed, Rejection) or parsed[2] != "probe":
            with self.lock:
                tracker.refused("", "bad_topic")
            return
        fleet, device_id, _ = parsed
        with self.lock:
            known = tracker.knows(device_id)
            if known and tracker.fleet_of(device_id) != fleet:
                tracker.refused(fleet, "unknown_device")
                return
        if not known and not self._enrolled(device_id, fleet, now):
            with self.lock:
                tracker.refused(fleet, "unknown_device")
            return
        with self.lock:
            tracker.feed(device_id, payload, now)

    def _enrolled(self, device_id: str, fleet: str, now: float) -> bool:
        """Look the device up (once; made-up ids are remembered, bounded) and start tracking it."""
        assert self.store is not None
        version = self.store.meta("registry_version")
        if version != self.registry_version:
            self.registry_version = version
            self.unknown.clear()
        if device_id in self.unknown:
            return False
        dev = self.store.device(device_id)
        if dev is None or not dev.active or dev.fleet != fleet:
            self.unknown[device_id] = None
            while len(self.unknown) > UNKNOWN_CACHE:
                self.unknown.popitem(last=False)
            return False
        state = self.store.device_state(device_id)
        with self.lock:
            self.tracker.add_device(device_id, fleet, state.seq if state is not None else -1, now)
        return True

    def _flush(self) -> None:
        """Counts into Prometheus and the probe_counts table; stale runs ended."""
        with self.lock:
            self.tracker.sweep(time.monotonic())
            counts = self.tracker.drain_counts()
        if not counts:
            return
        m = self.metrics
        for (fleet, kind, outcome), n in counts.items():
            if kind == "run":
                m.runs.labels(fleet, outcome).inc(n)
            elif outcome == CHECKED:
                m.chunks.labels(fleet).inc(n)
            else:
                m.dropped.labels(fleet, outcome).inc(n)
        if self.store is None:
            return
        try:
            with self.store._tx():
                self.store.db.executemany(
                    "INSERT INTO probe_counts(fleet, kind, outcome, count) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(fleet, kind, outcome) DO UPDATE SET count=probe_counts.count+excluded.count",
                    [(f, k, o, n) for (f, k, o), n in counts.items()],
                )
        except Exception as exc:  # a full disk: metrics still have the counts; the status view misses them
            log.warning("cannot store probe counts: %s", exc)
