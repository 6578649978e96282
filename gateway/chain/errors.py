"""Typed failures of the chain layer.

Callers (the anchoring stage) branch on these types, never on web3 or
transport exceptions: anything the RPC layer throws is translated at the edge
(see :mod:`gateway.chain.web3_chain`). Messages never carry key material and
name endpoints only by scheme, host and port, since URL paths and userinfo
often embed provider API keys.
"""

from __future__ import annotations


class ChainError(Exception):
    """Base class for every error raised by :mod:`gateway.chain`."""


class ChainUnavailable(ChainError):
    """The chain endpoint could not be reached or did not answer in time.

    Transient by nature: the caller keeps its pending record and retries.
    """


class AlreadyAnchored(ChainError):
    """The batch sequence number is not above the gateway's on-chain lastSeq.

    After a resubmission this usually means an earlier transaction for the
    same batch was mined after all: compare ``root_of(seq)`` with the root.
    """

    def __init__(self, batch_seq: int, last_seq: int) -> None:
        super().__init__(f"batch {batch_seq} already anchored (on-chain lastSeq is {last_seq})")
        self.batch_seq = batch_seq
        self.last_seq = last_seq


class SequenceGap(ChainError):
    """The batch sequence number skips one; the contract never allows gaps."""

    def __init__(self, batch_seq: int, expected: int) -> None:
        super().__init__(f"batch {batch_seq} would leave a gap: contract expects {expected}")
        self.batch_seq = batch_seq
        self.expected = expected


class NotAuthorized(ChainError):
    """The gateway's chain address is not (or no longer) authorised."""


class InvalidBatch(ChainError):
    """Rejected by the contract: zero root, zero size or batch seq 0."""


class AnchorReverted(ChainError):
    """A mined anchoring transaction reverted.

    Happens when a duplicate of an already-mined submission races in; the
    caller should consult ``last_seq()``/``root_of()`` before acting.
    """


class ChainKeyError(ChainError):
    """The gateway's chain key could not be loaded (never shows the key)."""
