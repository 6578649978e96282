"""The narrow interface between the anchoring stage and any EVM chain.

The anchoring stage writes its pending record *before* calling ``submit``,
polls ``receipt`` and ``head`` until the anchoring block is ``N`` blocks deep
(re-checking ``is_canonical`` on the way), and resubmits when ``receipt``
returns ``None`` for a transaction that was dropped or reorganised away.
Everything chain-specific (web3, RPC transport, signing) stays behind this
Protocol so the stage can be tested against the in-process chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol


class Receipt(NamedTuple):
    """Where an anchoring transaction was mined (a successful one)."""

    block_number: int
    block_hash: bytes
    gas_used: int


class ChainBackend(Protocol):
    @property
    def chain_id(self) -> int: ...

    @property
    def contract_address(self) -> str: ...

    @property
    def gateway_address(self) -> str: ...

    def submit(self, batch_seq: int, root: bytes, size: int) -> bytes:
        """Broadcast ``anchor(batch_seq, root, size)``; return the tx hash.

        Raises AlreadyAnchored / SequenceGap / NotAuthorized / InvalidBatch when
        the contract would reject it, ChainUnavailable when the RPC is down.
        """
        ...

    def receipt(self, tx_hash: bytes) -> Receipt | None:
        """The receipt, or None while pending or when dropped/reorganised away.

        Raises AnchorReverted if the transaction was mined but reverted.
        """
        ...

    def head(self) -> int:
        """Current block number."""
        ...

    def attest(self, message: bytes) -> bytes:
        """The gateway key's EIP-191 signature over ``message`` (no chain call)."""
        ...

    def is_canonical(self, block_number: int, block_hash: bytes) -> bool:
        """Is ``block_hash`` still the block at ``block_number``?"""
        ...

    def anchor_tx(self, batch_seq: int, from_block: int = 0) -> bytes | None:
        """Hash of the canonical transaction that anchored our ``batch_seq``.

        None if the batch is not anchored (on this chain and contract).
        """
        ...

    def last_seq(self) -> int:
        """On-chain lastSeq of this gateway (0 before its first batch)."""
        ...

    def root_of(self, batch_seq: int) -> bytes:
        """Anchored root of this gateway's batch (32 zero bytes if none)."""
        ...

    def verify_inclusion(
        self,
        batch_seq: int,
        leaf_hash: bytes,
        leaf_index: int,
        tree_size: int,
        proof: Sequence[bytes],
        gateway: str | None = None,
    ) -> bool:
        """Run the contract's RFC 9162 inclusion check (defaults to our gateway)."""
        ...
