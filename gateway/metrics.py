"""Prometheus metrics of one gateway (own registries, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class IngestMetrics:
    """Counted by the ingest process (gateway/ingest_process.py), served by the parent."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.accepted = Counter("surge_reports_accepted", "Reports verified and durably stored", registry=r)
        self.duplicates = Counter(
            "surge_reports_duplicate", "Resent reports acknowledged again, not stored twice", registry=r
        )
        self.rejected = Counter("surge_reports_rejected", "Reports rejected, by reason", ["reason"], registry=r)
        self.gaps = Counter("surge_report_gaps", "Accepted reports that follow a gap in seq or prev", registry=r)
        self.births = Counter("surge_births", "Birth messages, by outcome", ["outcome"], registry=r)
        self.queue_depth = Gauge("surge_ingest_queue_depth", "Messages received and not yet committed", registry=r)
        self.commit_errors = Counter(
            "surge_commit_errors", "Failed store commits (messages kept unacknowledged)", registry=r
        )
        self.probes = ProbeMetrics(r)  # bandwidth probes (block below)


class Metrics:
    """The gateway's /metrics: the pipeline's own, plus the ingest process's latest samples."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.unbatched = Gauge("surge_unbatched_reports", "Accepted reports waiting for a batch", registry=r)
        self.batch_size = Histogram(
            "surge_batch_size", "Reports per closed batch", registry=r, buckets=(1, 10, 100, 1000, 10_000, 100_000)
        )
        self.batches = Counter("surge_batches_closed", "Batches closed", registry=r)
        self.anchors_confirmed = Counter("surge_anchors_confirmed", "Anchors confirmed on chain", registry=r)
        self.anchors_resubmitted = Counter(
            "surge_anchors_resubmitted", "Anchors sent again after a drop or reorg", registry=r
        )
        self.pending_anchors = Gauge("surge_pending_anchors", "Batches closed and not yet confirmed", registry=r)
        self.time_to_anchor = Histogram(
            "surge_time_to_anchor_seconds",
            "Batch close to confirmation",
            registry=r,
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
        )
        self.gas_used = Counter("surge_gas_used", "Gas used by confirmed anchoring transactions", registry=r)
        self.chain_errors = Counter(
            "surge_chain_errors", "Chain calls that failed (endpoint unreachable etc.)", registry=r
        )
        self.receipts = Counter("surge_receipts_published", "Receipts published to devices", registry=r)
        self.attest = AttestMetrics(r)  # attestations (block below)

    def serve(self, port: int) -> None:
        """Expose /metrics on 127.0.0.1:port (bind elsewhere behind a proxy)."""
        start_http_server(port, addr="127.0.0.1", registry=self.registry)


# -- Verified bandwidth and attestations (issue 12 part A) ------------------------
class ProbeMetrics:
    """Probe chunks and runs the ingest process checked (gateway/probe_check.py), per fleet."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.chunks = Counter(
            "surge_probe_chunks_checked", "Probe chunks that passed every check", ["fleet"], registry=r
        )
        self.dropped = Counter(
            "surge_probe_chunks_dropped", "Probe chunks dropped, by reason", ["fleet", "reason"], registry=r
        )
        self.runs = Counter(
            "surge_probe_runs", "Probe runs ended, by outcome (checked or why not)", ["fleet", "outcome"], registry=r
        )
        self.connected = Gauge("surge_probe_connected", "The probe listener's broker connection is up", registry=r)


class AttestMetrics:
    """Reports the pipeline attested (gateway/attest.py), per fleet."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.attested = Counter(
            "surge_reports_attested", "Reports attested and signed by this gateway, by fleet", ["fleet"], registry=r
        )
        self.measured = Counter(
            "surge_reports_bw_measured",
            "Attested reports with a gateway-measured bw_up, by fleet",
            ["fleet"],
            registry=r,
        )
        self.flags = Counter(
            "surge_attestation_flags", "Attestation flags raised, by fleet and flag", ["fleet", "flag"], registry=r
        )

    def count(self, fleet: str, key: str, n: int = 1) -> None:
        """One drained count of gateway/attest.py: "attested", "measured" or a flag."""
        if key == "attested":
            self.attested.labels(fleet).inc(n)
        elif key == "measured":
            self.measured.labels(fleet).inc(n)
        else:
            self.flags.labels(fleet, key).inc(n)


# -- storage audit (gateway/storage_audit/) -----------------------------------


class StorageAuditMetrics:
    """Storage challenges, plot blocks and dropped audit messages, per fleet, on
    the gateway's registry (docs/operators.md, storage audit)."""

    CHALLENGES = frozenset(("sent", "retried", "passed", "failed", "timed_out"))
    BLOCKS = frozenset(("blocks_sent", "blocks_stored", "ack_ignored"))

    def __init__(self, registry: CollectorRegistry) -> None:
        self.challenges = Counter(
            "surge_storage_challenges",
            "Storage challenges by fleet and outcome: sent, retried (after a timeout), "
            "passed, failed, timed_out (after every retry)",
            ["fleet", "outcome"],
            registry=registry,
        )
        self.blocks = Counter(
            "surge_storage_plot_blocks",
            "Plot blocks by fleet: sent, stored (acknowledged), ack_ignored (repeats)",
            ["fleet", "kind"],
            registry=registry,
        )
        self.rejected = Counter(
            "surge_storage_audit_rejected",
            "Device audit messages dropped, by fleet and reason",
            ["fleet", "reason"],
            registry=registry,
        )

    def count(self, fleet: str, outcome: str, n: int = 1) -> None:
        if outcome in self.CHALLENGES:
            self.challenges.labels(fleet, outcome).inc(n)
        elif outcome in self.BLOCKS:
            self.blocks.labels(fleet, outcome.replace("blocks_", "")).inc(n)
        else:
            self.rejected.labels(fleet, outcome).inc(n)
