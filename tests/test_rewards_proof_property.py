"""Property: SurgeRewards' on-chain proof check agrees with surge_protocol/merkle.py.

For random reward trees (random owners and cumulative amounts, 1 to 70
leaves) published on the in-process EVM, the contract's claimable() is
non-zero exactly when merkle.verify_inclusion accepts the (leaf, index,
published size, proof): for the true proof and for mutated ones (another
index, a flipped byte, a dropped, added or swapped element, another amount).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surge_protocol import merkle
from gateway.chain import ChainKey
from gateway.rewards.chain import Web3RewardsChain
from gateway.rewards.epoch import leaf_data
from gateway.rewards.open import open_rewards_chain
from rewards_fixtures import RewardTree

ADDRESSES = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
# Up to 2**180 each: 70 of them stay below the 2**191 a published total may reach.
AMOUNTS = st.integers(min_value=1, max_value=2**180)


@pytest.fixture(scope="module")
def rc() -> Web3RewardsChain:
    # Funded beyond any total drawn below: the contract refuses an epoch its balance does not cover.
    return open_rewards_chain("memory", ChainKey.generate(), supply=2**190)


def _mutations(draw: st.DrawFn, tree: RewardTree, index: int) -> list[tuple[str, int, int, list[bytes]]]:
    """(label, cumulative, index, proof) variants of the true claim."""
    owner = tree.owners[index]
    cumulative = tree.cumulative[owner]
    proof = merkle.inclusion_proof(tree.leaf_hashes, index)
    out = [("true", cumulative, index, proof)]
    out.append(("amount", cumulative ^ 1, index, proof))
    if tree.size > 1:
        other = draw(st.integers(0, tree.size - 1).filter(lambda j: j != index))
        out.append(("index", cumulative, other, proof))
    if proof:
        k = draw(st.integers(0, len(proof) - 1))
        bit = draw(st.integers(0, 255))
        flipped = bytearray(proof[k])
        flipped[bit // 8] ^= 1 << (bit % 8)
        out.append(("flip", cumulative, index, proof[:k] + [bytes(flipped)] + proof[k + 1 :]))
        out.append(("drop", cumulative, index, proof[:-1]))
        if len(proof) > 1:
            out.append(("swap", cumulative, index, [proof[1], proof[0]] + proof[2:]))
    out.append(("extra", cumulative, index, proof + [os.urandom(32)]))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_contract_proof_check_agrees_with_merkle_py(rc: Web3RewardsChain, data: st.DataObject) -> None:
    cumulative = data.draw(st.dictionaries(ADDRESSES, AMOUNTS, min_size=1, max_size=70))
    tree = RewardTree.build(cumulative)
    epoch = rc.last_epoch() + 1
    # Cumulative totals never decrease on chain; nothing is claimed here, so any total at least the
    # tree's leaves the whole of every leaf claimable.
    total = max(tree.total, rc.total_of(epoch - 1) if epoch > 1 else 0)
    rc.publish(epoch, tree.root, tree.size, total)
    index = data.draw(st.integers(0, tree.size - 1))
    owner = tree.owners[index]
    for label, amount, at, proof in _mutations(data.draw, tree, index):
        expected = merkle.verify_inclusion(merkle.leaf_hash(leaf_data(owner, amount)), at, tree.size, proof, tree.root)
        got = rc.claimable(epoch, owner, amount, at, tree.size, proof)
        assert (got > 0) == expected, (label, tree.size, index, at, len(proof))
        if label == "true":
            assert expected, "merkle.py must accept its own proof"
        if expected:
            assert got == amount  # nothing claimed yet: the whole cumulative is due
