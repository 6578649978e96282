"""Merkle tree hashing and inclusion proofs, exactly as RFC 9162 section 2.1.

CONSENSUS-CRITICAL AND FROZEN.  Roots computed here are anchored on chain and
inclusion proofs computed here are handed to device owners as receipts that
anyone may check offline, years later, with any RFC 9162 implementation
(certificate-transparency libraries, the on-chain verifier).  Any change to
the bytes this module produces silently invalidates every receipt already
issued.  Like python-opentimestamps' ``core/``, treat it as a wire format:

* the algorithm is pinned by the published RFC 6962/9162 reference vectors in
  ``tests/vectors/merkle_rfc9162.json`` and by a naive recursive reference in
  the tests; a change that alters any vector is a protocol change, not a fix;
* hash function SHA-256, leaf hash ``SHA-256(0x00 || data)``, interior node
  ``SHA-256(0x01 || left || right)``, the empty tree ``SHA-256("")``;
* the tree over ``n > 1`` leaves splits at ``k``, the largest power of two
  strictly below ``n`` (RFC 9162 section 2.1.1);
* an inclusion proof is RFC 9162's ``PATH``: sibling hashes from the leaf
  upward, at most ``ceil(log2 n)`` of them.

The module is sans-I/O: it takes leaf hashes and returns bytes.  In Surge a
leaf is the exact COSE_Sign1 bytes of one report (hash it with ``leaf_hash``).

Note that an inclusion proof does not authenticate ``tree_size``: a path that
is valid for (index, size) can also be valid for the same index in another
size with the same path shape.  The size is authenticated by whatever signs
or anchors the root together with it (the batch record on chain).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from operator import index as _as_index
from typing import Final, cast

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleTree",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_inclusion",
]

HASH_SIZE: Final = 32
LEAF_PREFIX: Final = b"\x00"
NODE_PREFIX: Final = b"\x01"
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """Hash one leaf's data: SHA-256(0x00 || data)."""
    return _sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash two child hashes: SHA-256(0x01 || left || right)."""
    if len(left) != HASH_SIZE or len(right) != HASH_SIZE:
        raise ValueError("node_hash takes two 32-byte hashes")
    return _sha256(NODE_PREFIX + left + right).digest()


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle tree hash (MTH) of a list of leaf hashes."""
    level = _concat_leaf_hashes(leaf_hashes)
    if not level:
        return EMPTY_ROOT
    # Levels are discarded as soon as the next one exists, so a one-off root
    # needs about 1.5x the leaf bytes rather than the whole tree.
    while len(level) > HASH_SIZE:
        level = _next_level(level)
    return level


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 9162 PATH(index, D[n]) for one leaf; builds a throwaway tree.

    To prove many leaves of the same tree, build one ``MerkleTree`` instead.
    """
    return MerkleTree(leaf_hashes).proof(index)


def verify_inclusion(
    leaf_hash: bytes,
    index: int,
    tree_size: int,
    proof: Sequence[bytes],
    root: bytes,
) -> bool:
    """Check an inclusion proof with the algorithm of RFC 9162 section 2.1.3.2.

    Returns False (never raises) for any proof that does not verify,
    including an index outside the tree, a proof of the wrong length and
    hashes that are not 32 bytes long.
    """
    computed = _root_from_proof(leaf_hash, index, tree_size, proof)
    # Roots are public values, so a constant-time comparison buys nothing.
    return computed is not None and len(root) == HASH_SIZE and computed == root


def _root_from_proof(leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes]) -> bytes | None:
    """The root a proof implies, or None where RFC 9162 says to fail."""
    index = _as_index(index)
    tree_size = _as_index(tree_size)
    if not 0 <= index < tree_size or len(leaf) != HASH_SIZE:
        return None
    fn = index
    sn = tree_size - 1
    r = bytes(leaf)
    for p in proof:
        if sn == 0 or len(p) != HASH_SIZE:
            return None  # proof longer than the path, or a malformed hash
        if fn & 1 or fn == sn:
            r = _sha256(NODE_PREFIX + p + r).digest()
            if not fn & 1:
                # fn is the last node of its level with no right sibling:
                # it is promoted unchanged through the levels until it
                # becomes a right child, so skip those levels.
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _sha256(NODE_PREFIX + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        return None  # proof shorter than the path
    return r


def _concat_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    if any(len(h) != HASH_SIZE for h in leaf_hashes):
        raise ValueError("every leaf hash must be 32 bytes (hash data with leaf_hash)")
    return b"".join(leaf_hashes)


def _next_level(level: bytes) -> bytes:
    """Hash adjacent pairs of a level held as concatenated 32-byte hashes.

    An odd last node is carried up unchanged.  That is the same tree as RFC
    9162's split at the largest power of two below n: the right-edge node has
    no sibling at this height and is only combined once its subtree is
    complete relative to the left side.
    """
    count = len(level) // HASH_SIZE
    paired = (count // 2) * 2 * HASH_SIZE
    view = memoryview(level)
    sha = _sha256
    prefix = NODE_PREFIX
    # One digest object per node and nothing else kept alive: the result is a
    # single bytes object, not a list of million small ones.
    step = 2 * HASH_SIZE
    parts = [sha(prefix + view[i : i + step]).digest() for i in range(0, paired, step)]
    if count & 1:
        parts.append(level[paired:])
    return b"".join(parts)


class MerkleTree:
    """An immutable RFC 9162 tree that keeps every level for fast proofs.

    Building hashes each interior node once (O(n)); each proof is then
    O(log n) slices of stored levels.  Each level is one ``bytes`` object of
    concatenated 32-byte hashes, so a tree over n leaves costs about 64*n
    bytes and a handful of Python objects, whatever n is.
    """

    __slots__ = ("_levels", "_size")

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        self._init_from_level(_concat_leaf_hashes(leaf_hashes))

    @classmethod
    def from_leaves(cls, leaves: Sequence[bytes]) -> MerkleTree:
        """Build from leaf data (e.g. report COSE bytes), hashing each leaf."""
        return cls([leaf_hash(d) for d in leaves])

    @classmethod
    def from_concatenated(cls, leaf_hashes: bytes) -> MerkleTree:
        """Build from leaf hashes already concatenated (as a store may keep them)."""
        if len(leaf_hashes) % HASH_SIZE:
            raise ValueError("concatenated leaf hashes must be a multiple of 32 bytes")
        tree = cls.__new__(cls)
        tree._init_from_level(bytes(leaf_hashes))
        return tree

    def _init_from_level(self, level: bytes) -> None:
        self._size = len(level) // HASH_SIZE
        levels = [level]
        while len(level) > HASH_SIZE:
            level = _next_level(level)
            levels.append(level)
        self._levels: tuple[bytes, ...] = tuple(levels)

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return self._size

    @property
    def root(self) -> bytes:
        if self._size == 0:
            return EMPTY_ROOT
        return self._levels[-1]

    def leaf_hash(self, index: int) -> bytes:
        index = self._check_index(index)
        off = index * HASH_SIZE
        return self._levels[0][off : off + HASH_SIZE]

    def proof(self, index: int) -> list[bytes]:
        """RFC 9162 PATH(index, D[n]): sibling hashes, leaf level first."""
        index = self._check_index(index)
        path: list[bytes] = []
        node = index
        # The top level is the root itself and has no sibling.
        for level in self._levels[:-1]:
            off = (node ^ 1) * HASH_SIZE
            # No sibling means node is an odd last node that was carried up
            # unchanged, so this height contributes nothing to the path.
            if off < len(level):
                path.append(level[off : off + HASH_SIZE])
            node >>= 1
        return path

    def proofs(self) -> Iterator[list[bytes]]:
        """Every leaf's proof in leaf order, ~5x faster than calling proof().

        Consecutive leaves share their upper siblings: going from leaf i-1 to
        leaf i only changes the levels below the highest bit that flips, two
        levels on average, so the rest of the previous path is reused.
        """
        levels = self._levels[:-1]
        depth = len(levels)
        # Sibling per level; None where the node was carried up unchanged.
        current: list[bytes | None] = [None] * depth
        absent = depth
        for i in range(self._size):
            changed = (i ^ (i - 1)).bit_length() if i else depth
            for height in range(min(changed, depth)):
                level = levels[height]
                off = ((i >> height) ^ 1) * HASH_SIZE
                sibling = level[off : off + HASH_SIZE] if off < len(level) else None
                absent += (sibling is None) - (current[height] is None)
                current[height] = sibling
            if absent:
                yield [h for h in current if h is not None]
            else:
                yield cast("list[bytes]", current.copy())

    def _check_index(self, index: int) -> int:
        index = _as_index(index)
        if not 0 <= index < self._size:
            raise IndexError(f"leaf index {index} outside a tree of {self._size} leaves")
        return index
