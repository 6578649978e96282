"""SurgeRewards and SurgeToken on the in-process EVM, through the RewardsChain client.

Every rule of the contract is exercised with real transactions on py-evm:
publishing in order, the typed reverts, cumulative claims paid once, claims
sent on someone else's behalf, the claimable view, the cumulative totals the
contract enforces and an underfunded pool.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
from web3 import Web3
from web3.logs import DISCARD

from gateway.chain import ChainError, ChainKey, ChainUnavailable, NotAuthorized, open_chain
from gateway.chain.artifacts import load_artifact
from gateway.chain.open import fund_memory_account
from gateway.rewards.chain import (
    AlreadyPublished,
    EpochGap,
    ExceedsTotal,
    InvalidEpoch,
    InvalidProof,
    NothingToClaim,
    RewardsError,
    TokenError,
    TotalDecreased,
    TransferFailed,
    Underfunded,
    UnknownEpoch,
    Web3RewardsChain,
)
from gateway.rewards.open import open_rewards_chain
from rewards_fixtures import RewardTree

TOKEN = 10**18


def funded_key(rc: Web3RewardsChain) -> ChainKey:
    key = ChainKey.generate()
    fund_memory_account(rc.web3, key.address)
    return key


@pytest.fixture()
def rc() -> Web3RewardsChain:
    gateway = ChainKey.generate()
    anchor = open_chain("memory", gateway)
    return open_rewards_chain("memory", gateway, anchor_chain=anchor, fund=10_000 * TOKEN)


@pytest.fixture()
def owners() -> list[str]:
    return [ChainKey.generate().address for _ in range(3)]


def test_shares_the_anchor_chain_and_is_funded() -> None:
    gateway = ChainKey.generate()
    anchor = open_chain("memory", gateway)
    rc = open_rewards_chain("memory", gateway, anchor_chain=anchor, supply=10**6, fund=4000)
    assert rc.web3 is anchor.web3 and rc.chain_id == anchor.chain_id
    assert rc.gateway_address == gateway.address == anchor.gateway_address
    assert rc.is_authorized()
    assert rc.token_balance(rc.contract_address) == 4000
    assert rc.token_balance(gateway.address) == 10**6 - 4000
    # Anchoring still works beside it, on the same chain.
    anchor.submit(1, os.urandom(32), 3)
    assert anchor.last_seq() == 1
    # Reattaching by address finds the token through the contract.
    again = open_rewards_chain("memory", gateway, contract=rc.contract_address, anchor_chain=anchor)
    assert again.token_address == rc.token_address


def test_publish_in_order(rc: Web3RewardsChain, owners: list[str]) -> None:
    assert rc.last_epoch() == 0 and rc.epoch_tx(1) is None
    tree = RewardTree.build({o: (i + 1) * TOKEN for i, o in enumerate(owners)})
    tx = rc.publish(1, tree.root, tree.size, tree.total)
    assert rc.receipt(tx) is not None
    assert rc.last_epoch() == 1
    assert rc.root_of(1) == tree.root
    assert rc.leaves_of(1) == 3 and rc.total_of(1) == tree.total
    assert rc.epoch_tx(1) == tx and rc.epoch_tx(2) is None
    tx2 = rc.publish(2, os.urandom(32), 5, tree.total + 7)
    assert rc.last_epoch() == 2 and rc.epoch_tx(2) == tx2
    assert rc.root_of(3) == bytes(32)


def test_epoch_gap_and_duplicate_revert(rc: Web3RewardsChain) -> None:
    rc.publish(1, os.urandom(32), 1, 1)
    with pytest.raises(AlreadyPublished) as dup:
        rc.publish(1, os.urandom(32), 1, 1)
    assert (dup.value.epoch, dup.value.last_epoch) == (1, 1)
    with pytest.raises(EpochGap) as gap:
        rc.publish(3, os.urandom(32), 1, 1)
    assert (gap.value.epoch, gap.value.expected) == (3, 2)
    assert rc.last_epoch() == 1


def _contract_revert_name(rc: Web3RewardsChain, fn: str, *args: Any) -> str:
    """Call the contract directly (bypassing the client's own checks) and
    return the name of the custom error it reverts with."""
    abi = load_artifact("SurgeRewards").abi
    contract = rc.web3.eth.contract(address=Web3.to_checksum_address(rc.contract_address), abi=abi)
    from gateway.chain.tx import revert_data as _revert_data, selector as _selector

    errors = {_selector(e): e["name"] for e in abi if e["type"] == "error"}
    try:
        # estimate_gas, not call: eth-tester keeps the revert bytes only there.
        getattr(contract.functions, fn)(*args).estimate_gas({"from": rc.gateway_address})
    except Exception as exc:  # eth-tester raises its own TransactionFailed
        return errors.get(_revert_data(exc)[:4], f"unknown: {exc!r}")
    raise AssertionError("call did not revert")


def test_invalid_epoch_rejected_by_client_and_contract(rc: Web3RewardsChain) -> None:
    for epoch, root, leaves in ((0, os.urandom(32), 1), (1, bytes(32), 1), (1, os.urandom(32), 0)):
        with pytest.raises(InvalidEpoch):
            rc.publish(epoch, root, leaves, 1)
        assert _contract_revert_name(rc, "publish", epoch, root, leaves, 1) == "InvalidEpoch"
    # A total beyond the 191 bits the contract keeps it in.
    with pytest.raises(InvalidEpoch):
        rc.publish(1, os.urandom(32), 1, 2**191)
    assert _contract_revert_name(rc, "publish", 1, os.urandom(32), 1, 2**191) == "InvalidEpoch"
    # The contract names the broken rule itself, below the client's checks too.
    assert _contract_revert_name(rc, "publish", 1, os.urandom(32), 1, 10**30) == "Underfunded"
    assert rc.last_epoch() == 0


def test_unauthorized_publisher(rc: Web3RewardsChain) -> None:
    stranger = rc.attach(funded_key(rc))
    with pytest.raises(NotAuthorized):
        stranger.publish(1, os.urandom(32), 1, 1)
    # Only the owner authorises.
    with pytest.raises(NotAuthorized, match="owner"):
        stranger.authorize(stranger.gateway_address)
    rc.publish(1, os.urandom(32), 1, 1)
    rc.deauthorize(rc.gateway_address)
    assert not rc.is_authorized()
    with pytest.raises(NotAuthorized):
        rc.publish(2, os.urandom(32), 1, 1)
    rc.authorize(rc.gateway_address)
    rc.publish(2, os.urandom(32), 1, 1)  # resumes at lastEpoch + 1
    assert rc.last_epoch() == 2


def test_claim_pays_cumulative_minus_claimed(rc: Web3RewardsChain, owners: list[str]) -> None:
    a, b, c = owners
    e1 = RewardTree.build({a: 100, b: 250, c: 5})
    rc.publish(1, e1.root, e1.size, e1.total)
    alice = funded_key(rc)
    _, gas = rc.claim(alice, 1, *e1.claim_args(a))
    assert gas > 21_000
    assert rc.token_balance(a) == 100 and rc.claimed(a) == 100

    # Epoch 2: a earns 40 more, b 10 more; cumulative amounts grow.
    e2 = RewardTree.build({a: 140, b: 260, c: 5})
    rc.publish(2, e2.root, e2.size, e2.total)
    rc.claim(alice, 2, *e2.claim_args(a))
    assert rc.token_balance(a) == 140 and rc.claimed(a) == 140
    # b never claimed epoch 1: one claim of epoch 2 collects both epochs.
    rc.claim(alice, 2, *e2.claim_args(b))
    assert rc.token_balance(b) == 260
    assert rc.token_balance(rc.contract_address) == 10_000 * TOKEN - 400


def test_second_claim_and_older_epoch_revert_nothing_to_claim(rc: Web3RewardsChain, owners: list[str]) -> None:
    a, b, _ = owners
    e1 = RewardTree.build({a: 100, b: 1})
    e2 = RewardTree.build({a: 150, b: 1})
    rc.publish(1, e1.root, e1.size, e1.total)
    rc.publish(2, e2.root, e2.size, e2.total)
    sender = funded_key(rc)
    rc.claim(sender, 2, *e2.claim_args(a))
    with pytest.raises(NothingToClaim) as again:
        rc.claim(sender, 2, *e2.claim_args(a))
    assert (again.value.cumulative, again.value.claimed) == (150, 150)
    # The older, lower cumulative amount cannot be replayed either.
    with pytest.raises(NothingToClaim):
        rc.claim(sender, 1, *e1.claim_args(a))
    assert rc.token_balance(a) == 150


def test_wrong_amount_proof_index_or_size_reverts_invalid_proof(rc: Web3RewardsChain, owners: list[str]) -> None:
    a, b, c = owners
    tree = RewardTree.build({a: 100, b: 250, c: 5})
    rc.publish(1, tree.root, tree.size, tree.total)
    sender = funded_key(rc)
    account, cumulative, index, size, proof = tree.claim_args(a)
    bad = [
        (account, cumulative + 1, index, size, proof),  # wrong amount
        (b, cumulative, index, size, proof),  # someone else's leaf
        (account, cumulative, (index + 1) % size, size, proof),  # wrong index
        (account, cumulative, index, size, [bytes(32)] + proof[1:]),  # wrong sibling
        (account, cumulative, index, size, proof[:-1]),  # short proof
        (account, cumulative, index, size, proof + [os.urandom(32)]),  # long proof
        (account, cumulative, index, size + 1, proof),  # tree size mismatch
        (account, cumulative, index, 2, proof[:1]),  # another shape
    ]
    for args in bad:
        with pytest.raises(InvalidProof):
            rc.claim(sender, 1, *args)
        assert rc.claimable(1, *args) == 0
    assert rc.claimed(a) == 0 and rc.token_balance(a) == 0
    with pytest.raises(UnknownEpoch):
        rc.claim(sender, 2, *tree.claim_args(a))
    with pytest.raises(RewardsError, match="proof element 0"):
        rc.claim(sender, 1, account, cumulative, index, size, [b"\x01" * 31] + proof[1:])


def test_tree_size_is_bound_to_the_root(rc: Web3RewardsChain) -> None:
    # Leaf 2 of a 3-leaf tree and leaf 2 of a 4-leaf-shaped path share a proof
    # shape; the contract must hold the claimant to the published size.
    owners = [ChainKey.generate().address for _ in range(3)]
    tree = RewardTree.build({o: 10 for o in owners})
    rc.publish(1, tree.root, 3, tree.total)
    account, cumulative, index, size, proof = tree.claim_args(tree.owners[2])
    assert (index, size) == (2, 3)
    sender = funded_key(rc)
    with pytest.raises(InvalidProof):
        rc.claim(sender, 1, account, cumulative, index, 4, proof)
    rc.claim(sender, 1, account, cumulative, index, size, proof)
    assert rc.token_balance(account) == 10


def test_claim_for_another_account_pays_that_account(rc: Web3RewardsChain, owners: list[str]) -> None:
    a, b, _ = owners
    tree = RewardTree.build({a: 70, b: 30})
    rc.publish(1, tree.root, tree.size, tree.total)
    relayer = funded_key(rc)
    rc.claim(relayer, 1, *tree.claim_args(b))
    assert rc.token_balance(b) == 30
    assert rc.token_balance(relayer.address) == 0
    # A raw LocalAccount works as the signer too (what a keystore decrypts to).
    from eth_account import Account

    local = Account.create()
    fund_memory_account(rc.web3, local.address)
    rc.claim(local, 1, *tree.claim_args(a))
    assert rc.token_balance(a) == 70


def test_claimable_view(rc: Web3RewardsChain, owners: list[str]) -> None:
    a, b, _ = owners
    e1 = RewardTree.build({a: 100, b: 20})
    rc.publish(1, e1.root, e1.size, e1.total)
    assert rc.claimable(1, *e1.claim_args(a)) == 100
    assert rc.claimable(2, *e1.claim_args(a)) == 0  # unknown epoch
    rc.claim(funded_key(rc), 1, *e1.claim_args(a))
    assert rc.claimable(1, *e1.claim_args(a)) == 0
    e2 = RewardTree.build({a: 130, b: 20})
    rc.publish(2, e2.root, e2.size, e2.total)
    assert rc.claimable(2, *e2.claim_args(a)) == 30
    assert rc.claimable(2, *e2.claim_args(b)) == 20


def test_underfunded_epoch_is_refused_until_a_top_up() -> None:
    gateway = ChainKey.generate()
    rc = open_rewards_chain("memory", gateway, supply=1000, fund=50)
    owner = ChainKey.generate().address
    tree = RewardTree.build({owner: 80})
    with pytest.raises(Underfunded) as err:
        rc.publish(1, tree.root, tree.size, tree.total)
    assert (err.value.outstanding, err.value.balance) == (80, 50) and "30 more" in str(err.value)
    assert rc.last_epoch() == 0
    rc.fund(30)
    rc.publish(1, tree.root, tree.size, tree.total)
    assert rc.outstanding_of() == 80
    rc.claim(funded_key(rc), 1, *tree.claim_args(owner))
    assert rc.token_balance(owner) == 80 and rc.token_balance(rc.contract_address) == 0
    assert rc.outstanding_of() == 0


def test_gateways_sharing_a_short_balance_claim_after_a_top_up() -> None:
    # Each gateway's outstanding amount is checked against the balance on its own (one slot per
    # claim): together two can owe more than it holds, and the claim that finds it short reverts.
    gateway = ChainKey.generate()
    rc = open_rewards_chain("memory", gateway, supply=1000, fund=100)
    other = rc.attach(funded_key(rc))
    rc.authorize(other.gateway_address)
    owner = ChainKey.generate().address
    tree = RewardTree.build({owner: 80})
    rc.publish(1, tree.root, tree.size, tree.total)
    other.publish(1, tree.root, tree.size, tree.total)
    sender = funded_key(rc)
    rc.claim(sender, 1, *tree.claim_args(owner))
    with pytest.raises(TransferFailed):
        other.claim(sender, 1, *tree.claim_args(owner))
    assert other.claimed(owner) == 0 and other.outstanding_of() == 80  # the failed claim left no trace
    rc.fund(60)
    other.claim(sender, 1, *tree.claim_args(owner))
    assert rc.token_balance(owner) == 160


def test_cumulative_total_may_not_decrease(rc: Web3RewardsChain, owners: list[str]) -> None:
    a, b, _ = owners
    e1 = RewardTree.build({a: 100, b: 20})
    rc.publish(1, e1.root, e1.size, e1.total)
    e2 = RewardTree.build({a: 90, b: 20})
    with pytest.raises(TotalDecreased) as err:
        rc.publish(2, e2.root, e2.size, e2.total)
    assert (err.value.epoch, err.value.total, err.value.previous) == (2, 110, 120)
    e2 = RewardTree.build({a: 100, b: 20})  # an epoch where nobody earned: same total, allowed
    rc.publish(2, e2.root, e2.size, e2.total)
    assert rc.total_of(2) == 120 and rc.outstanding_of() == 120


def test_claims_never_exceed_the_published_total(rc: Web3RewardsChain, owners: list[str]) -> None:
    # A tree whose leaves hold more than the total published with it (a faulty gateway): the
    # claims stop at the total.
    a, b, _ = owners
    tree = RewardTree.build({a: 100, b: 50})
    rc.publish(1, tree.root, tree.size, 120)
    sender = funded_key(rc)
    rc.claim(sender, 1, *tree.claim_args(a))
    assert rc.outstanding_of() == 20
    assert rc.claimable(1, *tree.claim_args(b)) == 0
    with pytest.raises(ExceedsTotal) as err:
        rc.claim(sender, 1, *tree.claim_args(b))
    assert (err.value.amount, err.value.outstanding) == (50, 20)
    assert rc.claimed(b) == 0


def test_claims_are_tracked_per_gateway(rc: Web3RewardsChain, owners: list[str]) -> None:
    a = owners[0]
    other = rc.attach(funded_key(rc))
    rc.authorize(other.gateway_address)
    tree = RewardTree.build({a: 60})
    rc.publish(1, tree.root, 1, 60)
    other.publish(1, tree.root, 1, 60)
    sender = funded_key(rc)
    rc.claim(sender, 1, *tree.claim_args(a))
    other.claim(sender, 1, *tree.claim_args(a))
    assert rc.claimed(a) == 60 and other.claimed(a) == 60
    assert rc.token_balance(a) == 120
    with pytest.raises(NothingToClaim):
        rc.claim(sender, 1, *tree.claim_args(a), gateway=other.gateway_address)


def test_claimed_event(rc: Web3RewardsChain, owners: list[str]) -> None:
    a = owners[0]
    tree = RewardTree.build({a: 9})
    rc.publish(1, tree.root, 1, 9)
    tx, _ = rc.claim(funded_key(rc), 1, *tree.claim_args(a))
    contract = rc.web3.eth.contract(
        address=Web3.to_checksum_address(rc.contract_address), abi=load_artifact("SurgeRewards").abi
    )
    # The token's Transfer log is in the same receipt: skip it, not warn.
    events = contract.events.Claimed().process_receipt(rc.web3.eth.get_transaction_receipt(tx), errors=DISCARD)
    assert len(events) == 1
    ev = events[0]["args"]
    assert (ev["gateway"], ev["account"], ev["epoch"], ev["amount"], ev["cumulative"]) == (
        rc.gateway_address,
        a,
        1,
        9,
        9,
    )


def test_token_erc20_basics(rc: Web3RewardsChain) -> None:
    token = rc.web3.eth.contract(
        address=Web3.to_checksum_address(rc.token_address), abi=load_artifact("SurgeToken").abi
    )
    assert token.functions.decimals().call() == 18
    assert token.functions.symbol().call() == "SURGE"
    supply = token.functions.totalSupply().call()
    assert rc.token_balance(rc.gateway_address) + rc.token_balance(rc.contract_address) == supply
    friend = ChainKey.generate().address
    rc.transfer_tokens(friend, 5)
    assert rc.token_balance(friend) == 5
    with pytest.raises(TokenError, match="InvalidReceiver"):
        rc.transfer_tokens(rc.token_address, 1)
    poor = rc.attach(funded_key(rc))
    with pytest.raises(TokenError, match="InsufficientBalance"):
        poor.transfer_tokens(friend, 1)
    with pytest.raises(RewardsError, match="not an EVM address"):
        rc.token_balance("0x1234")


def test_gas_measurement_claims_real_proofs_of_full_length() -> None:
    from gateway.rewards.gas import measure_claims

    g = measure_claims(leaves=1000, claims=3)
    # ceil(log2 1000) = 10 siblings for leaf 0; every sampled claim was mined.
    assert g.proof_length == 10 and g.claims == 3
    assert len(g.first_gas) == len(g.repeat_gas) == 3
    # Both storage words start at zero on a first claim, not on a repeat.
    assert min(g.first_gas) > max(g.repeat_gas)


def test_bad_specs_tokens_and_endpoints_fail_clearly() -> None:
    key = ChainKey.generate()
    with pytest.raises(ChainError, match="unknown chain spec"):
        open_rewards_chain("ftp://example.invalid", key)
    # A token address without code: the constructor refuses it by name.
    with pytest.raises(TransferFailed):
        open_rewards_chain("memory", key, token=ChainKey.generate().address)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ChainUnavailable, match="unavailable"):
        open_rewards_chain(f"http://127.0.0.1:{port}", key, contract=key.address, timeout=2)
