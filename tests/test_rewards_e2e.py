"""Reward epochs end to end on the in-process EVM, with STAND-IN attestations: a fleet reports
through a real Mosquitto to a real gateway, batches anchor, and the attestation rows of
tests/rewards_helpers.py (standing in for the gateway's probe timing, storage audit and
gateway/attest.py, so that exact figures, a flag and an unattested report can be pinned) close
into epochs whose roots are published on SurgeRewards; two owners claim their tokens, a second
claim reverts NothingToClaim, `surge rewards recompute` matches byte for byte, and a tampered
proof or epoch file fails with the reason.

The same loop from the gateway's REAL attestation path (real agents' probes and storage plots)
is tests/test_rewards_attested_e2e.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker import Mosquitto
from gateway.chain import ChainKey
from gateway.chain.open import fund_memory_account
from gateway.config import GatewayConfig, validate
from gateway.rewards import epoch as E
from gateway.rewards import formula as F
from gateway.rewards import statement as S
from gateway.rewards.chain_errors import InvalidProof, NothingToClaim
from gateway.rewards.closer import epochs
from gateway.rewards.settings import RewardsConfig
from gateway.rewards.stage import epochs_topic
from gateway.service import Gateway
from gateway.store import Store
from gw_helpers import Collector, Device
from gw_process import AckPublisher, surge
from rewards_helpers import drive_to_confirmed_epochs

ALICE = E.checksum_owner("0x" + "a11ce" * 8)
BOB = E.checksum_owner("0x" + "b0b00" * 8)
assert ALICE and BOB
BUDGET = 10**21


def fleet() -> tuple[list[Device], dict[str, str]]:
    devs = [Device(board="rpi-4"), Device(board="esp32"), Device(board="rpi-4"), Device(board="rpi-4")]
    owners = {devs[0].id: ALICE, devs[1].id: ALICE, devs[2].id: BOB, devs[3].id: "carol's shed"}
    return devs, owners


def figures(devs: list[Device]):  # type: ignore[no-untyped-def]
    """What the (stand-in) attestation stage says it verified, per device."""
    table = {
        devs[0].id: (2 << 20, 8 << 30, ""),
        devs[1].id: (None, 1 << 30, ""),
        devs[2].id: (1 << 20, 4 << 30, "bw_overclaim"),
        devs[3].id: (4 << 20, 64 << 30, ""),
    }
    return lambda device, boot, seq: None if seq == 1 and device == devs[0].id else table[device]


def rewards_config(tmp: Path, epoch_seconds: float = 3.0) -> RewardsConfig:
    return RewardsConfig(
        formula=F.Formula(budget=BUDGET, caps={"esp32": F.BoardCap(storage_bytes=1 << 29)}),
        epoch_seconds=epoch_seconds,
        epochs_dir=str(tmp / "epochs"),
    )


def start(cfg: GatewayConfig, devs: list[Device], owners: dict[str, str]) -> Gateway:
    st = Store(cfg.db)
    for d in devs:
        st.enroll(d.id, d.key.public, d.board, d.fleet, owners[d.id])
    st.close()
    gw = Gateway(cfg)
    gw.start()
    assert gw.ingest.subscribed.wait(30), "the gateway's ingest did not subscribe"
    return gw


def check_epochs_and_files(tmp: Path, db: str, events: Collector) -> list[bytes]:
    """Every epoch file recomputes byte for byte (also through the CLI), chained to the one before."""
    st = Store(db)
    files = [e.file for e in epochs(st)]
    st.close()
    prev = None
    for n, raw in enumerate(files, 1):
        assert (tmp / "epochs" / ("epoch-%d.json" % n)).read_bytes() == raw
        assert E.recompute(raw, prev) == []
        prev = raw
    out = tmp / "epoch-1.json"
    surge("rewards", "epoch", "1", "--db", db, "--out", str(out))
    proc = surge("rewards", "recompute", str(out))
    assert proc.stdout.startswith("MATCHES"), proc.stdout
    # Integrators got every epoch on the topic: closed with the file itself, then confirmed.
    assert events.wait(lambda: len(events.of_kind("epochs")) >= 2 * len(files), 30)
    got = [json.loads(p) for _, p in events.of_kind("epochs")]
    closed = {m["epoch"]["epoch"]: m for m in got if m["event"] == "closed"}
    confirmed = {m["epoch"]["epoch"]: m for m in got if m["event"] == "confirmed"}
    assert set(closed) == set(confirmed) == set(range(1, len(files) + 1))
    assert closed[1]["epoch_file"].encode() == files[0]
    # A tampered epoch file is refused with the reason.
    tampered = tmp / "tampered.json"
    tampered.write_bytes(files[0].replace(b'"storage_bytes":8589934592', b'"storage_bytes":9589934592', 1))
    proc = surge("rewards", "recompute", str(tampered), check=False)
    assert proc.returncode == 1 and "body_sha256" in proc.stdout, proc.stdout
    return files


def test_fleet_to_claims_on_the_in_process_chain(tmp_path: Path, broker: Mosquitto) -> None:
    devs, owners = fleet()
    cfg = validate(
        GatewayConfig(
            broker=broker.url,
            db=str(tmp_path / "gw.db"),
            chain="memory",
            batch_size=4,
            batch_seconds=0.5,
            confirmations=2,
            pipeline_nice=0,
            rewards=rewards_config(tmp_path),
        )
    )
    gw = start(cfg, devs, owners)
    events = Collector(broker.port, epochs_topic(gw.gateway_id))
    pub = AckPublisher(broker.port)
    try:
        drive_to_confirmed_epochs(gw, devs, 4, pub.send, figures(devs))
        files = check_epochs_and_files(tmp_path, cfg.db, events)
        last = E.parse(files[-1]).record.body
        cum = dict(last["outputs"]["cumulative"])
        assert set(cum) == {ALICE, BOB}  # carol's label earns nothing ...
        carol = [d for f in files for d in E.parse(f).record.body["devices"] if d["device"] == devs[3].id]
        assert carol and all(r == E.OWNER_NOT_ADDRESS for d in carol for _, _, r in d["excluded"])
        assert sum(int(a) for f in files for _, a in E.parse(f).record.body["outputs"]["amounts"]) <= BUDGET * len(
            files
        )

        st = Store(cfg.db)
        statement = S.statement(st, ALICE)
        assert [d["device"] for d in statement["devices"]] == [devs[0].id, devs[1].id]
        excluded = [d["excluded"] for ep in statement["epochs"] for d in ep["devices"] if d["device"] == devs[0].id]
        # The one report the stand-in leaves alone is attested by the gateway's own stage (gateway/attest.py)
        # with nothing measured: it counts for coverage, not capacity, and is not excluded.
        assert excluded and all(e == {} for e in excluded)
        proofs = {o: S.reward_proof(st, o) for o in (ALICE, BOB)}
        st.close()
        rewards = gw.rewards.chain
        claimer = ChainKey.generate()  # anyone may send a claim; the tokens go to the owner
        fund_memory_account(rewards.web3, claimer.address)
        for owner, proof in proofs.items():
            summary = S.verify_proof(proof)
            assert summary["cumulative"] == int(cum[owner]) and proof["chain"]["contract"] == rewards.contract_address
            args = (
                summary["epoch"],
                owner,
                summary["cumulative"],
                summary["leaf_index"],
                summary["tree_size"],
                [bytes.fromhex(p) for p in proof["proof"]],
            )
            with pytest.raises(InvalidProof):  # one unit more than earned: the contract says no
                rewards.claim(claimer, args[0], owner, args[2] + 1, *args[3:])
            rewards.claim(claimer, *args)
            assert rewards.token_balance(owner) == int(cum[owner])
            assert rewards.claimed(owner) == int(cum[owner])
            with pytest.raises(NothingToClaim):
                rewards.claim(claimer, *args)
        # The proof file through the CLI, and one byte changed in it.
        path = tmp_path / "alice.json"
        surge("rewards", "statement", "--db", cfg.db, "--owner", ALICE.lower(), "--proof-out", str(path))
        ok = surge("rewards", "verify", str(path))
        assert ok.stdout.startswith("VALID") and ALICE in ok.stdout, ok.stdout
        raw = path.read_bytes()
        for needle, reason in [
            (b'"cumulative": "', "inclusion proof"),
            (b'"root": "', "inclusion proof"),
            (b'"tx_hash": "', "chain_signature"),
            (b'"start": ', "epoch_signature"),
        ]:
            at = raw.index(needle) + len(needle) + 1
            bad = bytearray(raw)
            bad[at] = ord("1") if bad[at] != ord("1") else ord("2")
            path.write_bytes(bytes(bad))
            proc = surge("rewards", "verify", str(path), check=False)
            assert proc.returncode == 1 and proc.stdout.startswith("INVALID") and reason in proc.stdout, (
                needle,
                proc.stdout,
            )
    finally:
        events.close()
        pub.close()
        gw.shutdown()
