"""RFC 9162 Merkle tree: published vectors, a naive reference, tampering.

The published vectors are what make this an RFC 9162 tree rather than a tree
that merely agrees with itself; the naive reference below is written straight
from the RFC's recursive definitions, deliberately sharing no code with
surge_protocol.merkle.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surge_protocol import merkle
from surge_protocol.merkle import MerkleTree, inclusion_proof, leaf_hash, node_hash, root, verify_inclusion

VECTORS = Path(__file__).parent / "vectors" / "merkle_rfc9162.json"


def _vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS.read_text())
    return data


# -- naive reference, RFC 9162 section 2.1.1 and 2.1.3.1 ---------------------


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]  # d holds leaf hashes already
    k = _split(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _split(len(d))
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def distinct_leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def flip_bit(b: bytes, bit: int) -> bytes:
    out = bytearray(b)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# -- published vectors ---------------------------------------------------------


def test_vector_leaf_hashes() -> None:
    v = _vectors()
    for data, want in zip(v["leaves"], v["leaf_hashes"], strict=True):
        assert leaf_hash(bytes.fromhex(data)).hex() == want


def test_vector_roots_for_every_prefix() -> None:
    v = _vectors()
    hashes = [leaf_hash(bytes.fromhex(x)) for x in v["leaves"]]
    assert len(v["roots"]) == 9
    for size, want in enumerate(v["roots"]):
        assert root(hashes[:size]).hex() == want, size
        assert MerkleTree(hashes[:size]).root.hex() == want, size
    assert root(hashes).hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    assert merkle.EMPTY_ROOT.hex() == v["roots"][0]


@pytest.mark.parametrize("case", _vectors()["inclusion_proofs"], ids=lambda c: f"{c['index']}of{c['tree_size']}")
def test_vector_inclusion_paths(case: dict[str, Any]) -> None:
    v = _vectors()
    hashes = [leaf_hash(bytes.fromhex(x)) for x in v["leaves"]]
    size, index = case["tree_size"], case["index"]
    want = [bytes.fromhex(h) for h in case["path"]]
    published_root = bytes.fromhex(v["roots"][size])
    assert inclusion_proof(hashes[:size], index) == want
    assert MerkleTree(hashes[:size]).proof(index) == want
    assert verify_inclusion(hashes[index], index, size, want, published_root)


def test_vector_every_proof_of_every_prefix_verifies_against_published_roots() -> None:
    v = _vectors()
    hashes = [leaf_hash(bytes.fromhex(x)) for x in v["leaves"]]
    for size in range(1, 9):
        published_root = bytes.fromhex(v["roots"][size])
        tree = MerkleTree(hashes[:size])
        for i in range(size):
            assert verify_inclusion(hashes[i], i, size, tree.proof(i), published_root)


def test_vector_proof_every_single_bit_tamper_fails() -> None:
    # Exhaustive over every bit of proof, root and leaf for the 5-of-8 vector.
    v = _vectors()
    hashes = [leaf_hash(bytes.fromhex(x)) for x in v["leaves"]]
    proof = MerkleTree(hashes).proof(5)
    good_root = bytes.fromhex(v["roots"][8])
    assert verify_inclusion(hashes[5], 5, 8, proof, good_root)
    for j in range(len(proof)):
        for bit in range(256):
            bad = list(proof)
            bad[j] = flip_bit(bad[j], bit)
            assert not verify_inclusion(hashes[5], 5, 8, bad, good_root)
    for bit in range(256):
        assert not verify_inclusion(hashes[5], 5, 8, proof, flip_bit(good_root, bit))
        assert not verify_inclusion(flip_bit(hashes[5], bit), 5, 8, proof, good_root)
    for bit in range(8):
        assert not verify_inclusion(hashes[5], 5 ^ (1 << bit), 8, proof, good_root)


# -- against the naive reference -----------------------------------------------


@pytest.mark.parametrize("size", range(0, 71))
def test_tree_matches_naive_reference(size: int) -> None:
    hashes = distinct_leaves(size)
    tree = MerkleTree(hashes)
    expected_root = ref_mth(hashes)
    assert tree.root == expected_root == root(hashes)
    assert len(tree) == tree.size == size
    all_proofs = list(tree.proofs())
    assert len(all_proofs) == size
    for i in range(size):
        path = ref_path(i, hashes)
        assert tree.proof(i) == path == all_proofs[i]
        assert tree.leaf_hash(i) == hashes[i]
        # ceil(log2 n) is the upper bound; right-edge leaves may need fewer.
        assert len(path) <= max(size - 1, 0).bit_length()
        assert verify_inclusion(hashes[i], i, size, path, expected_root)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(min_value=1, max_value=3000), data=st.data())
def test_random_sizes_match_reference(size: int, data: st.DataObject) -> None:
    hashes = distinct_leaves(size)
    tree = MerkleTree(hashes)
    assert tree.root == ref_mth(hashes)
    i = data.draw(st.integers(min_value=0, max_value=size - 1), label="index")
    assert tree.proof(i) == ref_path(i, hashes)
    assert verify_inclusion(hashes[i], i, size, tree.proof(i), tree.root)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(min_value=1, max_value=600), data=st.data())
def test_random_single_bit_tamper_fails(size: int, data: st.DataObject) -> None:
    hashes = distinct_leaves(size)
    tree = MerkleTree(hashes)
    i = data.draw(st.integers(min_value=0, max_value=size - 1), label="index")
    proof = tree.proof(i)
    good = tree.root
    assert verify_inclusion(hashes[i], i, size, proof, good)

    what = data.draw(st.sampled_from(["proof", "root", "leaf", "index"]), label="what")
    if what == "proof" and not proof:
        what = "root"  # a one-leaf tree has an empty proof
    if what == "proof":
        j = data.draw(st.integers(0, len(proof) - 1), label="element")
        bad = list(proof)
        bad[j] = flip_bit(bad[j], data.draw(st.integers(0, 255), label="bit"))
        assert not verify_inclusion(hashes[i], i, size, bad, good)
    elif what == "root":
        assert not verify_inclusion(hashes[i], i, size, proof, flip_bit(good, data.draw(st.integers(0, 255))))
    elif what == "leaf":
        assert not verify_inclusion(flip_bit(hashes[i], data.draw(st.integers(0, 255))), i, size, proof, good)
    else:
        bit = data.draw(st.integers(0, size.bit_length() + 1), label="bit")
        assert not verify_inclusion(hashes[i], i ^ (1 << bit), size, proof, good)


def test_every_index_tamper_fails_for_small_trees() -> None:
    for size in range(1, 40):
        hashes = distinct_leaves(size)
        tree = MerkleTree(hashes)
        for i in range(size):
            proof = tree.proof(i)
            for other in range(-1, size + 2):
                if other != i:
                    assert not verify_inclusion(hashes[i], other, size, proof, tree.root), (
                        size,
                        i,
                        other,
                    )


# -- malformed input -----------------------------------------------------------


def test_verify_rejects_out_of_range_and_wrong_length() -> None:
    hashes = distinct_leaves(13)
    tree = MerkleTree(hashes)
    proof = tree.proof(6)
    r = tree.root
    assert verify_inclusion(hashes[6], 6, 13, proof, r)
    assert not verify_inclusion(hashes[6], 13, 13, proof, r)
    assert not verify_inclusion(hashes[6], 14, 13, proof, r)
    assert not verify_inclusion(hashes[6], -1, 13, proof, r)
    assert not verify_inclusion(hashes[6], 0, 0, [], merkle.EMPTY_ROOT)
    assert not verify_inclusion(hashes[6], 6, 13, proof[:-1], r)
    assert not verify_inclusion(hashes[6], 6, 13, proof + [r], r)
    assert not verify_inclusion(hashes[6], 6, 13, proof + [b""], r)
    assert not verify_inclusion(hashes[6], 6, 13, [p + b"\x00" for p in proof], r)
    assert not verify_inclusion(hashes[6][:31], 6, 13, proof, r)
    assert not verify_inclusion(hashes[6], 6, 13, proof, r + b"\x00")
    # A one-leaf tree: the root is the leaf hash and the proof is empty.
    assert verify_inclusion(hashes[0], 0, 1, [], hashes[0])
    assert not verify_inclusion(hashes[0], 0, 1, [hashes[1]], hashes[0])


def test_tree_size_is_not_authenticated_by_the_path() -> None:
    # Documented RFC 9162 property: the size comes with the signed/anchored
    # root, not from the proof. Index 0 has the same path shape in 5..8.
    hashes = distinct_leaves(8)
    tree = MerkleTree(hashes)
    assert verify_inclusion(hashes[0], 0, 5, tree.proof(0), tree.root)


def test_bad_leaf_hashes_and_indices_raise() -> None:
    with pytest.raises(ValueError):
        root([b"short"])
    with pytest.raises(ValueError):
        MerkleTree([leaf_hash(b"a"), b"x" * 33])
    with pytest.raises(ValueError):
        MerkleTree.from_concatenated(b"x" * 33)
    with pytest.raises(ValueError):
        node_hash(b"a" * 32, b"b" * 31)
    tree = MerkleTree(distinct_leaves(3))
    for bad in (-1, 3):
        with pytest.raises(IndexError):
            tree.proof(bad)
        with pytest.raises(IndexError):
            tree.leaf_hash(bad)
    with pytest.raises(IndexError):
        MerkleTree([]).proof(0)


def test_hash_primitives_and_constructors() -> None:
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert a == hashlib.sha256(b"\x00a").digest()
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    # Domain separation: a node is never mistaken for a leaf of the same bytes.
    assert node_hash(a, b) != leaf_hash(a + b)
    assert MerkleTree([]).root == hashlib.sha256(b"").digest()
    assert list(MerkleTree([]).proofs()) == []
    leaves = [b"report-%d" % i for i in range(11)]
    hashes = [leaf_hash(x) for x in leaves]
    assert MerkleTree.from_leaves(leaves).root == root(hashes)
    assert MerkleTree.from_concatenated(b"".join(hashes)).root == root(hashes)
    assert MerkleTree.from_concatenated(b"".join(hashes)).proof(10) == ref_path(10, hashes)


def test_large_tree_proofs_from_both_paths_agree() -> None:
    size = 2**16 + 3
    hashes = distinct_leaves(size)
    tree = MerkleTree(hashes)
    assert tree.root == root(hashes)
    for i, path in enumerate(tree.proofs()):
        if i % 4099 == 0 or i >= size - 5:
            assert path == tree.proof(i)
            assert verify_inclusion(hashes[i], i, size, path, tree.root)
