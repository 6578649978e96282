"""SurgeAnchor on the in-process EVM (eth-tester/py-evm), through Web3Chain.

Covers the contract's sequencing and authorisation rules, its packed size
storage across word boundaries, reorg behaviour of the backend, and the
on-chain RFC 9162 verifier against an independent Python reference.
"""

from __future__ import annotations

import hashlib
import os
import random
from typing import Any

import pytest

from gateway.chain import (
    AlreadyAnchored,
    ChainKey,
    InvalidBatch,
    NotAuthorized,
    SequenceGap,
    Web3Chain,
    open_chain,
)
from gateway.chain.open import fund_memory_account


# ---------------------------------------------------------------- reference
# A deliberately naive, recursive RFC 9162 §2.1 implementation, written from
# the RFC's definitions and independent of both the contract and
# surge_protocol.merkle, so that a shared misreading would have to be made twice.


def _leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_root(hashes: list[bytes]) -> bytes:
    if len(hashes) == 1:
        return hashes[0]
    k = _split(len(hashes))
    return _node(ref_root(hashes[:k]), ref_root(hashes[k:]))


def ref_path(index: int, hashes: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 §2.1.3.1."""
    if len(hashes) == 1:
        return []
    k = _split(len(hashes))
    if index < k:
        return ref_path(index, hashes[:k]) + [ref_root(hashes[k:])]
    return ref_path(index - k, hashes[k:]) + [ref_root(hashes[:k])]


def tree(size: int, salt: bytes = b"") -> list[bytes]:
    return [_leaf(salt + b"report-%d" % i) for i in range(size)]


# ----------------------------------------------------------------- fixtures


@pytest.fixture
def chain() -> Web3Chain:
    return open_chain("memory")


def other_gateway(chain: Web3Chain) -> Web3Chain:
    """A second, funded key on the same chain and contract."""
    other = chain.attach(ChainKey.generate())
    fund_memory_account(chain.web3, other.gateway_address)
    return other


def anchor(chain: Web3Chain, seq: int, root: bytes, size: int) -> Any:
    receipt = chain.receipt(chain.submit(seq, root, size))
    assert receipt is not None, "memory chain auto-mines"
    return receipt


# -------------------------------------------------------------- sequencing


def test_anchor_one_two_three(chain: Web3Chain) -> None:
    assert chain.last_seq() == 0
    roots = [os.urandom(32) for _ in range(3)]
    for seq, root in enumerate(roots, start=1):
        receipt = anchor(chain, seq, root, 10 * seq)
        assert chain.is_canonical(receipt.block_number, receipt.block_hash)
        assert receipt.gas_used > 21000
        assert chain.last_seq() == seq
    for seq, root in enumerate(roots, start=1):
        assert chain.root_of(seq) == root
        assert chain.size_of(seq) == 10 * seq
    assert chain.root_of(4) == bytes(32)
    assert chain.size_of(4) == 0


def test_anchor_twice_is_already_anchored(chain: Web3Chain) -> None:
    for seq in (1, 2, 3):
        anchor(chain, seq, os.urandom(32), 5)
    with pytest.raises(AlreadyAnchored) as info:
        chain.submit(2, os.urandom(32), 5)
    assert (info.value.batch_seq, info.value.last_seq) == (2, 3)
    # The same root again is still a duplicate: seqs are never reused.
    with pytest.raises(AlreadyAnchored):
        chain.submit(3, chain.root_of(3), 5)
    assert chain.last_seq() == 3


def test_anchor_tx_found_from_events(chain: Web3Chain) -> None:
    txs = [chain.submit(seq, os.urandom(32), 1) for seq in (1, 2)]
    chain.mine(2)
    assert [chain.anchor_tx(1), chain.anchor_tx(2)] == txs
    assert chain.anchor_tx(3) is None
    other = other_gateway(chain)
    assert other.anchor_tx(1) is None  # keyed by gateway too


def test_gap_is_rejected(chain: Web3Chain) -> None:
    with pytest.raises(SequenceGap) as info:
        chain.submit(2, os.urandom(32), 5)
    assert info.value.expected == 1
    anchor(chain, 1, os.urandom(32), 5)
    with pytest.raises(SequenceGap):
        chain.submit(3, os.urandom(32), 5)


def test_invalid_batches_rejected_before_sending(chain: Web3Chain) -> None:
    head = chain.head()
    for seq, root, size in [
        (0, os.urandom(32), 1),
        (1, bytes(32), 1),
        (1, b"\x01" * 31, 1),
        (1, os.urandom(32), 0),
        (2**64, os.urandom(32), 1),
    ]:
        with pytest.raises(InvalidBatch):
            chain.submit(seq, root, size)
    assert chain.head() == head, "nothing was broadcast"


def test_sizes_across_word_boundaries(chain: Web3Chain) -> None:
    # Sizes live in 32-bit lanes, eight per storage word; a size of 2**32 - 2
    # or more takes the escape route. Cover two word boundaries and both
    # escape values at a boundary.
    sizes = {seq: seq * 7 + 1 for seq in range(1, 19)}
    sizes[7] = 2**32 - 3  # largest in-lane size
    sizes[8] = 2**32 - 2  # first escaped size, at a word boundary
    sizes[16] = 2**64 - 1  # largest uint64
    sizes[17] = 2**32 - 1  # the lane's REVOKED pattern, as a real size
    for seq, size in sizes.items():
        anchor(chain, seq, hashlib.sha256(b"%d" % seq).digest(), size)
        assert chain.last_seq() == seq
    for seq, size in sizes.items():
        assert chain.size_of(seq) == size, seq
    assert chain.is_authorized()


# ------------------------------------------------------------ authorisation


def test_unauthorized_gateway_rejected(chain: Web3Chain) -> None:
    stranger = other_gateway(chain)
    assert not stranger.is_authorized()
    for seq in (1, 2):
        with pytest.raises(NotAuthorized):
            stranger.submit(seq, os.urandom(32), 5)
    # A stranger cannot authorise itself either: only the owner may.
    with pytest.raises(NotAuthorized):
        stranger.authorize(stranger.gateway_address)
    assert stranger.last_seq() == 0


def test_authorize_deauthorize_resume(chain: Web3Chain) -> None:
    gw = other_gateway(chain)
    chain.authorize(gw.gateway_address)  # chain's key deployed: it is owner
    anchor(gw, 1, os.urandom(32), 3)
    anchor(gw, 2, os.urandom(32), 3)
    chain.deauthorize(gw.gateway_address)
    assert not gw.is_authorized()
    with pytest.raises(NotAuthorized):
        gw.submit(3, os.urandom(32), 3)
    assert gw.last_seq() == 2
    chain.authorize(gw.gateway_address)
    assert gw.is_authorized()
    anchor(gw, 3, os.urandom(32), 3)  # resumes exactly after its last batch
    assert gw.last_seq() == 3
    # Each gateway has its own sequence: the owner's is untouched.
    assert chain.last_seq() == 0
    anchor(chain, 1, os.urandom(32), 1)


def test_deauthorize_before_first_batch(chain: Web3Chain) -> None:
    gw = other_gateway(chain)
    chain.authorize(gw.gateway_address)
    chain.deauthorize(gw.gateway_address)
    with pytest.raises(NotAuthorized):
        gw.submit(1, os.urandom(32), 1)
    chain.authorize(gw.gateway_address)
    anchor(gw, 1, os.urandom(32), 1)


# ------------------------------------------------------- blocks and reorgs


def test_mine_advances_confirmations(chain: Web3Chain) -> None:
    receipt = anchor(chain, 1, os.urandom(32), 1)
    assert chain.head() == receipt.block_number
    chain.mine(5)
    assert chain.head() - receipt.block_number == 5
    assert chain.is_canonical(receipt.block_number, receipt.block_hash)
    assert not chain.is_canonical(receipt.block_number, b"\x00" * 32)
    assert not chain.is_canonical(chain.head() + 10, receipt.block_hash)


def test_reverted_chain_drops_receipt(chain: Web3Chain) -> None:
    tester: Any = chain.web3.provider.ethereum_tester  # type: ignore[attr-defined]
    anchor(chain, 1, os.urandom(32), 1)
    snapshot = tester.take_snapshot()
    tx = chain.submit(2, os.urandom(32), 1)
    mined = chain.receipt(tx)
    assert mined is not None
    tester.revert_to_snapshot(snapshot)
    chain.mine(3)  # a different block now sits at the old height
    assert chain.receipt(tx) is None
    assert not chain.is_canonical(mined.block_number, mined.block_hash)
    assert chain.last_seq() == 1
    root = os.urandom(32)
    anchor(chain, 2, root, 1)  # resubmission succeeds
    assert chain.root_of(2) == root


# ----------------------------------------------------- inclusion verifier


def _tampered(proof: list[bytes], i: int) -> list[bytes]:
    bad = list(proof)
    bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
    return bad


def check_tree(chain: Web3Chain, seq: int, size: int, indices: list[int]) -> None:
    hashes = tree(size, salt=b"%d/" % seq)
    root = ref_root(hashes)
    anchor(chain, seq, root, size)
    for index in indices:
        proof = ref_path(index, hashes)
        leaf = hashes[index]
        assert chain.verify_inclusion(seq, leaf, index, size, proof), (size, index)
        assert not chain.verify_inclusion(seq, _leaf(b"forged"), index, size, proof)
        for i in range(len(proof)):
            assert not chain.verify_inclusion(seq, leaf, index, size, _tampered(proof, i))
        if size > 1:
            assert not chain.verify_inclusion(seq, leaf, (index + 1) % size, size, proof)
            assert not chain.verify_inclusion(seq, leaf, index, size, proof[:-1])
        assert not chain.verify_inclusion(seq, leaf, index, size, proof + [root])
        # Only the anchored size counts, even where the path shape also fits
        # another size (e.g. index 0 of sizes 3 and 4).
        assert not chain.verify_inclusion(seq, leaf, index, size + 1, proof)
        assert not chain.verify_inclusion(seq, leaf, size, size, proof)
        assert not chain.verify_inclusion(seq + 1, leaf, index, size, proof)


def test_verify_inclusion_sizes_1_to_17(chain: Web3Chain) -> None:
    for size in range(1, 18):
        check_tree(chain, seq=size, size=size, indices=list(range(size)))


def test_verify_inclusion_random_sizes(chain: Web3Chain) -> None:
    rng = random.Random(9162)
    for seq, size in enumerate([31, 32, 33, 100, 257, rng.randrange(500, 3000)], start=1):
        indices = sorted({0, size - 1, size // 2, *(rng.randrange(size) for _ in range(4))})
        check_tree(chain, seq, size, indices)


def test_verify_inclusion_other_gateway(chain: Web3Chain) -> None:
    hashes = tree(5)
    anchor(chain, 1, ref_root(hashes), 5)
    reader = other_gateway(chain)  # unauthorised, read-only use
    proof = ref_path(3, hashes)
    assert reader.verify_inclusion(1, hashes[3], 3, 5, proof, gateway=chain.gateway_address)
    assert not reader.verify_inclusion(1, hashes[3], 3, 5, proof)


def test_agrees_with_gateway_merkle(chain: Web3Chain) -> None:
    merkle = pytest.importorskip("surge_protocol.merkle")
    for seq, size in enumerate([1, 2, 3, 6, 13, 17], start=1):
        hashes = [merkle.leaf_hash(b"cose-%d-%d" % (seq, i)) for i in range(size)]
        root = merkle.root(hashes)
        assert root == ref_root(hashes)
        anchor(chain, seq, root, size)
        for index in range(size):
            proof = merkle.inclusion_proof(hashes, index)
            assert proof == ref_path(index, hashes)
            on_chain = chain.verify_inclusion(seq, hashes[index], index, size, proof)
            assert on_chain and merkle.verify_inclusion(hashes[index], index, size, proof, root)
