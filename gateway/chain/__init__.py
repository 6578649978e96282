"""EVM chain layer of the gateway: anchor batch roots in SurgeAnchor.

Entry point: :func:`open_chain`, returning a :class:`ChainBackend`. The
Solidity sources and their committed artifacts live beside this file; see
``compile.mjs``.
"""

from __future__ import annotations

from .backend import ChainBackend, Receipt
from .errors import (
    AlreadyAnchored,
    AnchorReverted,
    ChainError,
    ChainKeyError,
    ChainUnavailable,
    InvalidBatch,
    NotAuthorized,
    SequenceGap,
)
from .keys import ChainKey, load_chain_key, load_keystore
from .open import MEMORY, open_chain
from .web3_chain import Web3Chain

__all__ = [
    "MEMORY",
    "AlreadyAnchored",
    "AnchorReverted",
    "ChainBackend",
    "ChainError",
    "ChainKey",
    "ChainKeyError",
    "ChainUnavailable",
    "InvalidBatch",
    "NotAuthorized",
    "Receipt",
    "SequenceGap",
    "Web3Chain",
    "load_chain_key",
    "load_keystore",
    "open_chain",
]
