"""Reward epochs against hardhat's node over JSON-RPC: the gateway deploys and funds SurgeRewards,
epochs confirm after K blocks, owners claim with `surge rewards claim` (a second claim is refused),
`surge rewards verify --rpc` reads the root back, and a reorg that takes published epochs away
(evm_snapshot / evm_revert) is ridden out: `reorged`, published again, confirmed again.

(The chain client alone against hardhat is tests/test_rewards_chain_hardhat.py.)

Attestations are the stand-in rows of tests/rewards_helpers.py (the chain is what is under test
here); the real attestation path is tests/test_rewards_attested_e2e.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from broker import Mosquitto
from gateway.chain import ChainKey
from gateway.config import GatewayConfig, validate
from gateway.rewards import epoch as E
from gateway.rewards import statement as S
from gateway.rewards.closer import epochs
from gateway.rewards.settler import anchors
from gateway.rewards.stage import epochs_topic
from gateway.store import Store
from gw_helpers import Collector
from gw_process import HARDHAT_KEY_0, HARDHAT_KEY_1, AckPublisher, HardhatNode, rpc, surge, wait_for
from rewards_helpers import drive_to_confirmed_epochs
from test_rewards_e2e import ALICE, BOB, check_epochs_and_files, figures, fleet, rewards_config, start

K = 2


@pytest.fixture
def chain_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SURGE_CHAIN_KEY", HARDHAT_KEY_0)


def config(tmp: Path, broker: Mosquitto, node: HardhatNode) -> GatewayConfig:
    return validate(
        GatewayConfig(
            broker=broker.url,
            db=str(tmp / "gw.db"),
            chain=node.url,
            batch_size=4,
            batch_seconds=0.5,
            confirmations=K,
            pipeline_nice=0,
            rewards=rewards_config(tmp),
        )
    )


def test_fleet_to_claims_over_json_rpc(tmp_path: Path, broker: Mosquitto, node: HardhatNode, chain_key: None) -> None:
    devs, owners = fleet()
    cfg = config(tmp_path, broker, node)
    gw = start(cfg, devs, owners)
    events = Collector(broker.port, epochs_topic(gw.gateway_id))
    pub = AckPublisher(broker.port)
    try:
        drive_to_confirmed_epochs(gw, devs, 4, pub.send, figures(devs), mine=lambda: node.mine(1))
        files = check_epochs_and_files(tmp_path, cfg.db, events)
        cum = dict(E.parse(files[-1]).record.body["outputs"]["cumulative"])
        assert set(cum) == {ALICE, BOB}
        keystore = tmp_path / "claimer.json"
        keystore.write_text(json.dumps(ChainKey.from_hex(HARDHAT_KEY_1).encrypt("pw")))
        env = dict(os.environ, SURGE_KEYSTORE_PASSWORD="pw")
        rewards = gw.rewards.chain
        for owner in (ALICE, BOB):
            proof = tmp_path / ("%s.json" % owner)
            surge("rewards", "statement", "--db", cfg.db, "--owner", owner, "--proof-out", str(proof))
            out = surge("rewards", "verify", str(proof), "--rpc", node.url).stdout
            assert "root matches" in out and "claimable %s" % cum[owner] in out, out
            out = surge("rewards", "claim", str(proof), "--rpc", node.url, "--keystore", str(keystore), env=env).stdout
            assert out.startswith("claimed %s for %s" % (cum[owner], owner)), out
            assert rewards.token_balance(owner) == int(cum[owner])
            again = surge(
                "rewards", "claim", str(proof), "--rpc", node.url, "--keystore", str(keystore), env=env, check=False
            )
            assert again.returncode == 2 and "nothing to claim" in again.stderr, again.stderr
            out = surge("rewards", "verify", str(proof), "--rpc", node.url).stdout
            assert "claimable 0" in out, out
    finally:
        events.close()
        pub.close()
        gw.shutdown()


def test_reorg_takes_published_epochs_away_and_they_come_back(
    tmp_path: Path, broker: Mosquitto, node: HardhatNode, chain_key: None
) -> None:
    devs, owners = fleet()
    cfg = config(tmp_path, broker, node)
    gw = start(cfg, devs, owners)
    events = Collector(broker.port, epochs_topic(gw.gateway_id))
    pub = AckPublisher(broker.port)
    snapshot = rpc(node.url, "evm_snapshot")  # contracts deployed, nothing anchored or published yet
    node.mine(3)
    try:
        drive_to_confirmed_epochs(gw, devs, 3, pub.send, figures(devs), mine=lambda: node.mine(1))
        st = Store(cfg.db)
        before = {e.epoch: e.file for e in epochs(st)}
        first_blocks = {
            n: [(a.block_number, a.block_hash) for a in anchors(st, n) if a.state == "confirmed"] for n in before
        }
        assert gw.rewards.chain.last_epoch() == max(before)

        assert rpc(node.url, "evm_revert", [snapshot]) is True
        assert gw.rewards.chain.last_epoch() == 0

        def again() -> Any:
            gw.step()
            node.mine(1)
            eps = epochs(st)
            return (
                all(e.state == "confirmed" for e in eps)
                and all(any(a.state == "confirmed" for a in anchors(st, e.epoch)) for e in eps)
                and gw.rewards.chain.last_epoch() == max(before)
            )

        wait_for(again, 120, "epochs published and confirmed again after the reorg", interval=0.2)
        # Same epochs, same bytes; only where they sit on chain changed.
        assert {e.epoch: e.file for e in epochs(st)} == before
        for n in before:
            states = [a.state for a in anchors(st, n)]
            assert states[-1] == "confirmed" and "dropped" in states, states
            assert gw.rewards.chain.root_of(n) == E.parse(before[n]).record.root
        got = [json.loads(p) for _, p in events.of_kind("epochs")]
        assert {m["epoch"]["epoch"] for m in got if m["event"] == "reorged"} == set(before)
        # Hardhat may mine the identical signed transaction again (same hash, new
        # block), so what is guaranteed is where it sits: the first blocks are no
        # longer canonical and the epoch's confirmed anchor now is.
        for n in before:
            for number, block in first_blocks[n]:
                assert number is not None and block is not None
                assert not gw.rewards.chain.is_canonical(number, block)
            now = [a for a in anchors(st, n) if a.state == "confirmed"][-1]
            assert now.block_number is not None and now.block_hash is not None
            assert gw.rewards.chain.is_canonical(now.block_number, now.block_hash)
        # A proof made now verifies on chain again.
        proof = S.reward_proof(st, ALICE)
        assert S.check_on_chain(proof, node.url)["claimable"] == int(proof["cumulative"])
        st.close()
    finally:
        events.close()
        pub.close()
        gw.shutdown()
