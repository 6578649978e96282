"""Typed failures of the SurgeRewards client, one per custom error of the contract.

All derive from :class:`gateway.chain.errors.ChainError`, so a caller that
already handles the anchoring layer's ``ChainUnavailable`` (transient, retry)
and ``NotAuthorized`` handles the rewards client the same way. :func:`raise_revert`
decodes a revert by its 4-byte selector, never by parsing a node's message
text.
"""

from __future__ import annotations

from typing import Any, NoReturn

from eth_abi.abi import decode as abi_decode
from web3 import Web3

from gateway.chain.artifacts import load_artifact
from gateway.chain.errors import ChainError, NotAuthorized
from gateway.chain.tx import revert_data, selector


class RewardsError(ChainError):
    """Base class of the errors below."""


class EpochGap(RewardsError):
    """publish() skipped an epoch: the contract expects exactly lastEpoch + 1."""

    def __init__(self, epoch: int, expected: int) -> None:
        super().__init__(f"epoch {epoch} would leave a gap: contract expects {expected}")
        self.epoch = epoch
        self.expected = expected


class AlreadyPublished(RewardsError):
    """publish() of an epoch at or below the gateway's on-chain lastEpoch.

    After a resubmission this usually means the earlier transaction was mined
    after all: compare ``root_of(epoch)`` with the root.
    """

    def __init__(self, epoch: int, last_epoch: int) -> None:
        super().__init__(f"epoch {epoch} already published (on-chain lastEpoch is {last_epoch})")
        self.epoch = epoch
        self.last_epoch = last_epoch


class InvalidEpoch(RewardsError):
    """Epoch 0, an all-zero root or zero leaves: refused before or by the contract."""


class UnknownEpoch(RewardsError):
    """claim() against an epoch that gateway never published."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"epoch {epoch} is not published by that gateway")
        self.epoch = epoch


class InvalidProof(RewardsError):
    """The (account, cumulative) leaf, index, tree size and proof do not lead
    to the published root of that epoch (a wrong amount, proof or size)."""

    def __init__(self) -> None:
        super().__init__(
            "invalid proof: the leaf (account, cumulative), index, tree size and path "
            "do not match the epoch's published root"
        )


class NothingToClaim(RewardsError):
    """The cumulative amount is not above what was already paid (a second claim)."""

    def __init__(self, cumulative: int, claimed: int) -> None:
        super().__init__(f"nothing to claim: cumulative {cumulative}, already claimed {claimed}")
        self.cumulative = cumulative
        self.claimed = claimed


class TransferFailed(RewardsError):
    """The token transfer failed, typically because the contract's token
    balance is below the amount due; the claim stays valid for a top-up."""


class TotalDecreased(RewardsError):
    """publish() with a cumulative total below the gateway's previous epoch's."""

    def __init__(self, epoch: int, total: int, previous: int) -> None:
        super().__init__(
            f"epoch {epoch}: cumulative total {total} is below the previous epoch's {previous}; "
            "cumulative amounts never decrease"
        )
        self.epoch, self.total, self.previous = epoch, total, previous


class Underfunded(RewardsError):
    """publish() would leave the gateway owing more than the contract's token balance."""

    def __init__(self, outstanding: int, balance: int) -> None:
        super().__init__(
            f"publishing would leave {outstanding} tokens outstanding but the rewards contract holds "
            f"{balance}: transfer at least {outstanding - balance} more tokens to it, then the epoch "
            "is published on the next pass"
        )
        self.outstanding, self.balance = outstanding, balance


class ExceedsTotal(RewardsError):
    """claim() would pay more than the gateway's published totals leave outstanding."""

    def __init__(self, amount: int, outstanding: int) -> None:
        super().__init__(
            f"claim of {amount} exceeds the {outstanding} the gateway's published totals leave "
            "outstanding: its tree holds more than its published total"
        )
        self.amount, self.outstanding = amount, outstanding


class TokenError(RewardsError):
    """A SurgeToken call reverted (insufficient balance or allowance, bad receiver)."""


class RewardsTxReverted(RewardsError):
    """A mined rewards transaction reverted (a racing duplicate, typically):
    consult ``last_epoch()``/``root_of()`` or ``claimed()`` before acting."""


# -- decoding reverts into the errors above ---------------------------------


def contract_errors() -> dict[bytes, dict[str, Any]]:
    """ABI entries of SurgeRewards' and SurgeToken's custom errors, by selector."""
    return {
        selector(e): e
        for name in ("SurgeRewards", "SurgeToken")
        for e in load_artifact(name).abi
        if e.get("type") == "error"
    }


def raise_revert(what: str, exc: Exception, errors: dict[bytes, dict[str, Any]]) -> NoReturn:
    raw = revert_data(exc)
    entry = errors.get(raw[:4])
    if entry is None:
        raise ChainError(f"{what}: contract reverted (revert data {raw[:4].hex() or 'empty'})") from None
    try:
        args = abi_decode([str(i["type"]) for i in entry["inputs"]], bytes(raw[4:]))
    except Exception:
        raise ChainError(f"{what}: contract reverted with malformed {entry['name']} data") from None
    name = entry["name"]
    if name == "EpochGap":
        raise EpochGap(int(args[0]), int(args[1])) from None
    if name == "AlreadyPublished":
        raise AlreadyPublished(int(args[0]), int(args[1])) from None
    if name == "InvalidEpoch":
        raise InvalidEpoch("contract rejected the epoch (epoch 0, zero root, zero leaves or total >= 2**191)") from None
    if name == "UnknownEpoch":
        raise UnknownEpoch(int(args[0])) from None
    if name == "InvalidProof":
        raise InvalidProof() from None
    if name == "NothingToClaim":
        raise NothingToClaim(int(args[0]), int(args[1])) from None
    if name == "TransferFailed":
        raise TransferFailed(
            f"{what}: token transfer failed (is the rewards contract's token balance below the amount due?)"
        ) from None
    if name == "TotalDecreased":
        raise TotalDecreased(int(args[0]), int(args[1]), int(args[2])) from None
    if name == "Underfunded":
        raise Underfunded(int(args[0]), int(args[1])) from None
    if name == "ExceedsTotal":
        raise ExceedsTotal(int(args[0]), int(args[1])) from None
    if name == "NotAuthorized":
        raise NotAuthorized(f"gateway {Web3.to_checksum_address(args[0])} is not authorised to publish") from None
    if name == "NotOwner":
        raise NotAuthorized(f"{what}: only the contract owner may do this") from None
    # SurgeToken's errors (InsufficientBalance, InsufficientAllowance, InvalidReceiver).
    raise TokenError(f"{what}: token refused: {name}{tuple(args)}") from None
