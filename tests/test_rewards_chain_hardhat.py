"""SurgeRewards over JSON-RPC: a real hardhat node (the `node` fixture of conftest.py).

Deploys token and rewards beside SurgeAnchor, publishes an epoch, confirms
it, claims for oneself and on another's behalf, checks that the typed
reverts decode from a real node's error data, and that a published epoch
rolled back by evm_revert (a reorg, to the gateway) is seen as gone and can
be published again.
"""

from __future__ import annotations

import os

import pytest

from gateway.chain import ChainKey, NotAuthorized, open_chain
from gateway.rewards.chain import (
    EpochGap,
    InvalidProof,
    NothingToClaim,
    Web3RewardsChain,
)
from gateway.rewards.open import open_rewards_chain
from gw_process import HARDHAT_KEY_0, HARDHAT_KEY_1, HardhatNode, rpc
from rewards_fixtures import RewardTree

CONFIRMATIONS = 2


@pytest.fixture(scope="module")
def rc(node: HardhatNode) -> Web3RewardsChain:
    gateway = ChainKey.from_hex(HARDHAT_KEY_0)
    anchor = open_chain(node.url, key=gateway)
    deployed = open_rewards_chain(node.url, gateway, anchor_chain=anchor, fund=10**24)
    # The gateway remembers the address and reattaches, as after a restart.
    return open_rewards_chain(node.url, gateway, contract=deployed.contract_address)


def confirm(rc: Web3RewardsChain, tx: bytes) -> None:
    for _ in range(CONFIRMATIONS + 5):
        receipt = rc.receipt(tx)
        assert receipt is not None
        if rc.head() - receipt.block_number >= CONFIRMATIONS:
            assert rc.is_canonical(receipt.block_number, receipt.block_hash)
            return
        rc.mine(1)
    raise AssertionError("never confirmed")


def test_publish_and_claim(rc: Web3RewardsChain) -> None:
    assert rc.chain_id == 31337
    assert rc.token_balance(rc.contract_address) == 10**24
    claimer = ChainKey.from_hex(HARDHAT_KEY_1)
    other = ChainKey.generate().address
    tree = RewardTree.build({claimer.address: 3 * 10**18, other: 5 * 10**18})
    epoch = rc.last_epoch() + 1
    tx = rc.publish(epoch, tree.root, tree.size, tree.total)
    confirm(rc, tx)
    assert rc.epoch_tx(epoch) == tx and rc.root_of(epoch) == tree.root

    assert rc.claimable(epoch, *tree.claim_args(claimer.address)) == 3 * 10**18
    _, gas = rc.claim(claimer, epoch, *tree.claim_args(claimer.address))
    assert gas > 21_000
    assert rc.token_balance(claimer.address) == 3 * 10**18
    # The claimer relays the other owner's claim; the tokens go to the owner.
    rc.claim(claimer, epoch, *tree.claim_args(other))
    assert rc.token_balance(other) == 5 * 10**18
    assert rc.token_balance(claimer.address) == 3 * 10**18

    # Typed reverts decode from the node's JSON-RPC error data.
    with pytest.raises(NothingToClaim):
        rc.claim(claimer, epoch, *tree.claim_args(other))
    account, cumulative, index, size, proof = tree.claim_args(other)
    with pytest.raises(InvalidProof):
        rc.claim(claimer, epoch, account, cumulative + 1, index, size, proof)
    with pytest.raises(EpochGap):
        rc.publish(epoch + 2, os.urandom(32), 1, 1)
    with pytest.raises(NotAuthorized):
        rc.attach(claimer).publish(1, os.urandom(32), 1, 1)


def test_rolled_back_epoch_is_seen_and_republished(node: HardhatNode, rc: Web3RewardsChain) -> None:
    epoch = rc.last_epoch() + 1
    # Cumulative totals never decrease on chain: this epoch's is the last one's (nobody earned more).
    total = rc.total_of(epoch - 1) if epoch > 1 else 1
    snapshot = rpc(node.url, "evm_snapshot")
    tx = rc.publish(epoch, os.urandom(32), 1, total)
    mined = rc.receipt(tx)
    assert mined is not None
    assert rpc(node.url, "evm_revert", [snapshot]) is True
    rc.mine(2)
    assert rc.receipt(tx) is None
    assert not rc.is_canonical(mined.block_number, mined.block_hash)
    assert rc.epoch_tx(epoch) is None and rc.last_epoch() == epoch - 1
    root = os.urandom(32)
    confirm(rc, rc.publish(epoch, root, 1, total))
    assert rc.root_of(epoch) == root
