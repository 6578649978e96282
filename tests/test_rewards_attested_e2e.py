"""A fleet earns from the REAL attestation path, on the in-process EVM.

Real CPython agents (`surge agent run`, one process each) run bandwidth probes
and keep storage plots against a real Mosquitto; the gateway's own stages time
the probes (gateway/probe_listener.py, gateway/probe_check.py), audit the plots
(gateway/storage_audit/, `storage_audit = true`) and attest every report
(gateway/attest.py).  Reward epochs close over those attestations only, two
owners claim on chain, a second claim reverts, the epoch files recompute byte
for byte, and a device that claims ten times the bandwidth it sends is flagged
and earns exactly what the published formula gives a flagged device.

Nothing here writes an attestation row: tests/test_rewards_e2e.py (stand-in
rows, to pin the formula's edge cases) is the only place that does.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from broker import Mosquitto
from gateway.chain import ChainKey
from gateway.chain.open import fund_memory_account
from gateway.config import GatewayConfig, validate
from gateway.rewards import epoch as E
from gateway.rewards import formula as F
from gateway.rewards import statement as S
from gateway.rewards.chain_errors import NothingToClaim
from gateway.rewards.closer import StoredEpoch, epochs
from gateway.rewards.settings import RewardsConfig
from gateway.service import Gateway
from gateway.store import Store
from gw_process import gateway_log
from test_agent_harness import ROOT, write_config
from test_probe_e2e import CHEAT

ALICE = E.checksum_owner("0x" + "a11ce" * 8)
BOB = E.checksum_owner("0x" + "b0b00" * 8)
assert ALICE and BOB
PLOT = 1 << 20  # 1 MiB: the formula counts whole attested MiB
FORMULA = F.Formula(budget=10**21, storage_weight=1000, bandwidth_weight=1)


@pytest.fixture
def nodelay_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """Mosquitto as docs/operators.md configures it for probes: no Nagle delay on its writes."""
    b = Mosquitto(tmp_path / "mosquitto-nodelay", extra_conf="set_tcp_nodelay true")
    b.start()
    yield b
    b.stop()


# Every device sits on the same slow link (tests/test_probe_e2e.py: about 250 kB/s, 2 ms a chunk), so
# that the gateway's timing of an honest probe is not loopback noise on a loaded machine; the cheat
# claims 10x what it measured, the honest devices what they measured.
HONEST = CHEAT.replace(") * 10\n", ")\n")
assert HONEST != CHEAT


def _agent(cfg: Path, cheat: bool) -> subprocess.Popen[str]:
    args = ["agent", "run", "--config", str(cfg)]
    cmd = [sys.executable, "-c", CHEAT if cheat else HONEST, *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.communicate(timeout=20)[0] or ""
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0] or ""


def _earning_epoch(store: Store, devices: list[str]) -> StoredEpoch | None:
    """The first confirmed epoch in which every device has its whole plot proven and a measured bandwidth."""
    for e in epochs(store):
        if e.state != "confirmed":
            continue
        rows = {d["device"]: d for d in E.parse(e.file).record.body["devices"]}
        if all(d in rows and rows[d]["storage_bytes"] == PLOT and rows[d]["bw_up"] for d in devices):
            return e
    return None


def _wait(pred: Any, timeout: float, what: str, db: str) -> Any:
    end = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < end, "%s not reached in %.0f s" % (what, timeout)
        time.sleep(0.5)


def test_fleet_earns_from_real_probes_and_storage_audit(tmp_path: Path, nodelay_broker: Mosquitto) -> None:
    broker = nodelay_broker
    db = str(tmp_path / "gw.db")
    cfg = validate(
        GatewayConfig(
            broker=broker.url,
            db=db,
            chain="memory",
            batch_seconds=1.0,
            confirmations=2,
            pipeline_nice=0,
            storage_audit=True,
            audit_plot_kib=PLOT >> 10,
            audit_k=16,
            audit_interval_s=2.0,
            audit_deadline_s=5.0,
            audit_retries=1,
            audit_window_s=3600.0,
            audit_blocks_per_s=400.0,
            rewards=RewardsConfig(formula=FORMULA, epoch_seconds=6.0, epochs_dir=str(tmp_path / "epochs")),
        )
    )
    # Three honest devices and one that claims 10x the bandwidth it sends.  No mounts: they claim no
    # storage of their own, so what they earn for storage is the plot they prove, and nothing flags them.
    names = {"a1": ALICE, "a2": ALICE, "b1": BOB, "cheat": BOB}
    configs: dict[str, tuple[Path, str]] = {}
    st = Store(db)
    for name, owner in names.items():
        path, key = write_config(tmp_path, broker.port, name=name, interval=1.0, mounts=[], bw_probe_bytes=4096)
        st.enroll(key.device_id, key.public, "linux-generic", "test", owner)
        configs[name] = (path, key.device_id)
    gw = Gateway(cfg)
    thread = threading.Thread(target=gw.run, name="gateway", daemon=True)
    thread.start()
    procs: dict[str, subprocess.Popen[str]] = {}
    logs: dict[str, str] = {}
    try:
        assert gw.ingest.subscribed.wait(30), "the gateway's ingest did not subscribe"
        for name, (path, _) in configs.items():
            procs[name] = _agent(path, cheat=name == "cheat")
        ids = [d for _, d in configs.values()]
        try:
            earning = _wait(lambda: _earning_epoch(st, ids), 180, "an epoch with every plot proven", db)
        except AssertionError:
            for name, p in procs.items():
                logs[name] = _stop(p)
            raise AssertionError(
                "no earning epoch: %r\n%s\n%s"
                % (
                    [
                        (
                            e.epoch,
                            e.state,
                            [
                                (d["device"], d["storage_bytes"], d["bw_up"], d["flags"])
                                for d in E.parse(e.file).record.body["devices"]
                            ],
                        )
                        for e in epochs(st)
                    ],
                    gateway_log(Path(db))[-2000:],
                    {n: lg[-800:] for n, lg in logs.items()},
                )
            ) from None
    finally:
        for name, p in procs.items():
            logs.setdefault(name, _stop(p))
        gw.stop_event.set()
        thread.join(60)
    assert not thread.is_alive(), "the gateway did not stop"

    # The earning epoch, from the gateway's own attestations: honest devices unflagged, the cheat flagged.
    body = E.parse(earning.file).record.body
    rows = {d["device"]: d for d in body["devices"]}
    points = dict(body["outputs"]["points"])
    cheat_id = configs["cheat"][1]
    for name, (_, dev) in configs.items():
        row = rows[dev]
        assert row["owner"] == names[name] and row["attested"] >= 1 and row["challenges"]["failed"] == 0, row
        if name == "cheat":
            assert "bw_overclaim" in row["flags"], row
        else:
            assert row["flags"] == [], row
    cheat = E.DeviceInputs.from_json(rows[cheat_id])
    assert cheat.attested_figures().flagged
    # What the formula gives a flagged device: its unflagged points, times flagged_permille.
    length = earning.header["end"] - earning.header["start"]
    unflagged = F.points(FORMULA, F.Attested(**{**cheat.attested_figures().__dict__, "flagged": False}), length)
    assert unflagged > 0
    assert points[cheat_id] == unflagged * FORMULA.flagged_permille // F.PERMILLE < unflagged

    # Every epoch recomputes from its inputs alone, byte for byte, chained to the one before.
    files = [e.file for e in epochs(st)]
    prev = None
    for n, raw in enumerate(files, 1):
        assert (tmp_path / "epochs" / ("epoch-%d.json" % n)).read_bytes() == raw
        assert E.recompute(raw, prev) == []
        prev = raw

    # Both owners claim on chain what their proofs say; a second claim reverts.
    proofs = {o: S.reward_proof(st, o) for o in (ALICE, BOB)}
    st.close()
    rewards = gw.rewards.chain
    claimer = ChainKey.generate()
    fund_memory_account(rewards.web3, claimer.address)
    for owner, proof in proofs.items():
        summary = S.verify_proof(proof)
        assert summary["cumulative"] > 0 and proof["chain"] is not None
        args = (
            summary["epoch"],
            owner,
            summary["cumulative"],
            summary["leaf_index"],
            summary["tree_size"],
            [bytes.fromhex(p) for p in proof["proof"]],
        )
        rewards.claim(claimer, *args)
        assert rewards.token_balance(owner) == rewards.claimed(owner) == summary["cumulative"]
        with pytest.raises(NothingToClaim):
            rewards.claim(claimer, *args)
    assert "storing plot 1 (4096-byte blocks)" in logs["a1"] and "challenge on plot 1 answered" in logs["a1"]
