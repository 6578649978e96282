"""Helpers for the SurgeRewards tests: reward trees built with surge_protocol/merkle.py."""

from __future__ import annotations

from dataclasses import dataclass

from surge_protocol import merkle
from gateway.rewards.epoch import leaf_data


@dataclass(frozen=True)
class RewardTree:
    """An epoch's (owner, cumulative) leaves, sorted by owner address bytes."""

    owners: list[str]
    cumulative: dict[str, int]
    leaf_hashes: list[bytes]

    @classmethod
    def build(cls, cumulative: dict[str, int]) -> RewardTree:
        owners = sorted(cumulative, key=lambda a: bytes.fromhex(a[2:]))
        hashes = [merkle.leaf_hash(leaf_data(o, cumulative[o])) for o in owners]
        return cls(owners, dict(cumulative), hashes)

    @property
    def root(self) -> bytes:
        return merkle.root(self.leaf_hashes)

    @property
    def size(self) -> int:
        return len(self.owners)

    @property
    def total(self) -> int:
        return sum(self.cumulative.values())

    def claim_args(self, owner: str) -> tuple[str, int, int, int, list[bytes]]:
        """(account, cumulative, leaf index, tree size, proof) for ``owner``."""
        i = self.owners.index(owner)
        return owner, self.cumulative[owner], i, self.size, merkle.inclusion_proof(self.leaf_hashes, i)
