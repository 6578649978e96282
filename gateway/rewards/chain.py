"""The SurgeRewards client: publish epoch roots, read them, claim (in-process EVM and JSON-RPC).

:func:`gateway.rewards.open.open_rewards_chain` opens the contracts on ``"memory"`` (the
in-process EVM; pass the gateway's ``anchor_chain`` so SurgeRewards lives on
the *same* chain instance as SurgeAnchor) or on an ``http(s)://`` JSON-RPC
node. Without a contract address it deploys SurgeToken (whole supply minted
to ``key``) and SurgeRewards, authorises ``key`` as a publishing gateway and
funds the rewards contract with tokens; see gateway/chain/README.md.

Sending, receipts, blocks and the translating layer are
:mod:`gateway.chain.tx`'s, shared with the SurgeAnchor client: transport
failures become ``ChainUnavailable``, and this module decodes the contract
reverts into the typed errors of :mod:`gateway.rewards.chain_errors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract

from gateway.chain.artifacts import load_artifact
from gateway.chain.backend import Receipt
from gateway.chain.keys import ChainKey
from gateway.chain.tx import (
    ContractClient,
    TxSender,
    TxSigner,
    translating,
)

from .chain_errors import (
    AlreadyPublished,
    EpochGap,
    ExceedsTotal,
    InvalidEpoch,
    InvalidProof,
    NothingToClaim,
    RewardsError,
    RewardsTxReverted,
    TokenError,
    TotalDecreased,
    TransferFailed,
    Underfunded,
    UnknownEpoch,
    contract_errors,
    raise_revert,
)

__all__ = [
    "DEFAULT_SUPPLY",
    "Web3RewardsChain",
    "AlreadyPublished",
    "EpochGap",
    "ExceedsTotal",
    "InvalidEpoch",
    "InvalidProof",
    "NothingToClaim",
    "RewardsError",
    "RewardsTxReverted",
    "TokenError",
    "TotalDecreased",
    "TransferFailed",
    "Underfunded",
    "UnknownEpoch",
]

UINT64_MAX = 2**64 - 1
UINT256_MAX = 2**256 - 1
# SurgeRewards keeps a gateway's outstanding amount in 191 bits of one word.
MAX_TOTAL = 2**191 - 1
# One billion tokens of 18 decimals: the SurgeToken supply a fresh deployment
# mints, all of which goes to the rewards contract unless `fund` says less.
DEFAULT_SUPPLY = 10**9 * 10**18


class Web3RewardsChain(ContractClient):
    """SurgeRewards (and its token) bound to one gateway key on one chain."""

    def __init__(
        self,
        w3: Web3,
        key: TxSigner,
        contract_address: str,
        endpoint: str,
        token_address: str | None = None,
    ) -> None:
        self._errors = contract_errors()
        super().__init__(w3, key, endpoint)
        rewards = load_artifact("SurgeRewards")
        token = load_artifact("SurgeToken")
        self._contract: Contract = w3.eth.contract(address=Web3.to_checksum_address(contract_address), abi=rewards.abi)
        self._published_topic = HexBytes(
            Web3.keccak(text="EpochPublished(address,uint64,bytes32,uint64,uint256)")
        ).to_0x_hex()
        if token_address is None:
            token_address = str(self._rpc("token", self._contract.functions.token().call))
        self._token: Contract = w3.eth.contract(address=Web3.to_checksum_address(token_address), abi=token.abi)

    # ----------------------------------------------------------- construction

    @classmethod
    def deploy(
        cls,
        w3: Web3,
        key: TxSigner,
        endpoint: str,
        *,
        token: str | None = None,
        supply: int = DEFAULT_SUPPLY,
        fund: int | None = None,
    ) -> Web3RewardsChain:
        """Deploy SurgeRewards owned by ``key`` and authorise ``key``.

        Without ``token``, a SurgeToken of ``supply`` is deployed first (minted
        to ``key``) and ``fund`` tokens (default: all of them) go to the
        rewards contract. With ``token``, only ``fund`` (if given) is sent,
        from ``key``'s balance of it.
        """
        if not 0 <= supply <= UINT256_MAX:
            raise RewardsError(f"supply {supply} outside uint256")
        sender = TxSender(w3, key, endpoint)
        errors = contract_errors()
        with translating(endpoint, "deploy", lambda what, exc: raise_revert(what, exc, errors)):
            if token is None:
                token = sender.deploy(load_artifact("SurgeToken"), supply)
                if fund is None:
                    fund = supply
            address = sender.deploy(load_artifact("SurgeRewards"), _address(token))
        chain = cls(w3, key, address, endpoint, token)
        chain.authorize(key.address)
        if fund:
            chain.fund(fund)
        return chain

    def attach(self, key: TxSigner) -> Web3RewardsChain:
        """Another gateway key on the same chain and contracts."""
        return Web3RewardsChain(self._w3, key, self.contract_address, self._endpoint, self.token_address)

    def __repr__(self) -> str:
        return (
            f"Web3RewardsChain(endpoint={self.endpoint!r}, chain_id={self._chain_id}, "
            f"contract={self.contract_address}, token={self.token_address}, "
            f"gateway={self.gateway_address})"
        )

    # ------------------------------------------------------------- properties

    @property
    def contract_address(self) -> str:
        return str(self._contract.address)

    @property
    def token_address(self) -> str:
        return str(self._token.address)

    # --------------------------------------------------------- gateway (publish)

    def publish(self, epoch: int, root: bytes, leaves: int, total: int) -> bytes:
        """Broadcast ``publish(epoch, root, leaves, total)``; return the tx hash.

        Raises AlreadyPublished / EpochGap / NotAuthorized / InvalidEpoch when
        the contract would reject it, ChainUnavailable when the RPC is down.
        """
        if not 1 <= epoch <= UINT64_MAX:
            raise InvalidEpoch(f"epoch {epoch} outside 1..2**64-1")
        if len(root) != 32 or root == bytes(32):
            raise InvalidEpoch("root must be 32 bytes and not all zero")
        if not 1 <= leaves <= UINT64_MAX:
            raise InvalidEpoch(f"leaf count {leaves} outside 1..2**64-1")
        if not 0 <= total <= MAX_TOTAL:
            raise InvalidEpoch(f"total {total} outside 0..2**191-1")
        return self._send("publish epoch", self._contract.functions.publish(epoch, bytes(root), leaves, total))

    def receipt(self, tx_hash: bytes) -> Receipt | None:
        """The receipt, or None while pending or when dropped/reorganised away.

        Raises RewardsTxReverted if the transaction was mined but reverted.
        """

        r = self._mined_receipt(tx_hash)
        if r is None:
            return None
        if int(r["status"]) != 1:
            raise RewardsTxReverted(
                f"rewards tx {HexBytes(tx_hash).to_0x_hex()} reverted in block "
                f"{int(r['blockNumber'])}; check last_epoch()/root_of()/claimed()"
            )
        return Receipt(int(r["blockNumber"]), bytes(r["blockHash"]), int(r["gasUsed"]))

    def epoch_tx(self, epoch: int, from_block: int = 0) -> bytes | None:
        """Hash of the canonical tx that published our ``epoch``, or None.

        Found through the EpochPublished event (gateway and epoch are both
        indexed), so a gateway that crashed between broadcasting and
        recording the hash still finds its transaction.
        """
        topics: list[Any] = [
            self._published_topic,
            HexBytes(bytes(12) + bytes(HexBytes(self.gateway_address))).to_0x_hex(),
            HexBytes(epoch.to_bytes(32, "big")).to_0x_hex(),
        ]
        # An epoch is published at most once, so at most one log matches.
        return self._event_tx(self._contract.address, topics, from_block)

    # ------------------------------------------------------------------ views

    def last_epoch(self, gateway: str | None = None) -> int:
        fn = self._contract.functions.lastEpoch(self._gw(gateway))
        return int(self._rpc("lastEpoch", fn.call))

    def root_of(self, epoch: int, gateway: str | None = None) -> bytes:
        """Published root of the epoch (32 zero bytes if none)."""
        fn = self._contract.functions.rootOf(self._gw(gateway), epoch)
        return bytes(self._rpc("rootOf", fn.call))

    def leaves_of(self, epoch: int, gateway: str | None = None) -> int:
        fn = self._contract.functions.leavesOf(self._gw(gateway), epoch)
        return int(self._rpc("leavesOf", fn.call))

    def total_of(self, epoch: int, gateway: str | None = None) -> int:
        fn = self._contract.functions.totalOf(self._gw(gateway), epoch)
        return int(self._rpc("totalOf", fn.call))

    def outstanding_of(self, gateway: str | None = None) -> int:
        """The gateway's latest published cumulative total minus what its epochs have paid."""
        fn = self._contract.functions.outstandingOf(self._gw(gateway))
        return int(self._rpc("outstandingOf", fn.call))

    def claimed(self, account: str, gateway: str | None = None) -> int:
        """Cumulative amount already paid to ``account`` for the gateway's epochs."""
        fn = self._contract.functions.claimed(self._gw(gateway), _address(account))
        return int(self._rpc("claimed", fn.call))

    def claimable(
        self,
        epoch: int,
        account: str,
        cumulative: int,
        leaf_index: int,
        tree_size: int,
        proof: Sequence[bytes],
        gateway: str | None = None,
    ) -> int:
        """What claim() would pay (0 for an invalid proof or nothing due)."""
        args = _claim_args(epoch, account, cumulative, leaf_index, tree_size, proof)
        fn = self._contract.functions.claimable(self._gw(gateway), *args)
        return int(self._rpc("claimable", fn.call))

    def token_balance(self, account: str) -> int:
        fn = self._token.functions.balanceOf(_address(account))
        return int(self._rpc("balanceOf", fn.call))

    def is_authorized(self, gateway: str | None = None) -> bool:
        fn = self._contract.functions.isAuthorized(self._gw(gateway))
        return bool(self._rpc("isAuthorized", fn.call))

    # ------------------------------------------------------------------ claim

    def claim(
        self,
        key: LocalAccount | ChainKey,
        epoch: int,
        account: str,
        cumulative: int,
        leaf_index: int,
        tree_size: int,
        proof: list[bytes],
        gateway: str | None = None,
    ) -> tuple[bytes, int]:
        """Send the claim signed by ``key`` (anyone may; ``account`` is paid)
        and wait until mined: (tx hash, gas used).

        The call is simulated first (gas estimation), so a claim the contract
        refuses raises InvalidProof / NothingToClaim / UnknownEpoch /
        TransferFailed without spending gas. ``gateway`` defaults to ours.
        """
        signer = key if isinstance(key, ChainKey) else ChainKey(key)
        args = _claim_args(epoch, account, cumulative, leaf_index, tree_size, proof)
        tx_hash = self._send("claim", self._contract.functions.claim(self._gw(gateway), *args), signer)
        receipt = self._rpc("claim receipt", lambda: self._wait(tx_hash))
        if int(receipt["status"]) != 1:
            raise RewardsTxReverted(
                f"claim tx {HexBytes(tx_hash).to_0x_hex()} reverted when mined "
                f"(a racing claim?); check claimed({_address(account)})"
            )
        return tx_hash, int(receipt["gasUsed"])

    # ----------------------------------------------------------- owner actions

    def authorize(self, gateway: str) -> None:
        """Owner only: let ``gateway`` publish epochs (waits until mined)."""
        self._send_and_wait("authorize", self._contract.functions.authorize(_address(gateway)))

    def deauthorize(self, gateway: str) -> None:
        """Owner only: stop ``gateway`` publishing (its epochs stay claimable)."""
        self._send_and_wait("deauthorize", self._contract.functions.deauthorize(_address(gateway)))

    def fund(self, amount: int) -> None:
        """Transfer ``amount`` tokens from our key to the rewards contract."""
        self.transfer_tokens(self.contract_address, amount)

    def transfer_tokens(self, to: str, amount: int) -> None:
        """Transfer ``amount`` tokens from our key to ``to`` (waits until mined)."""
        if not 0 <= amount <= UINT256_MAX:
            raise TokenError(f"amount {amount} outside uint256")
        self._send_and_wait("token transfer", self._token.functions.transfer(_address(to), amount))

    # ------------------------------------------------------------- plumbing

    def _gw(self, gateway: str | None) -> str:
        return _address(gateway) if gateway is not None else self.gateway_address

    def _send_and_wait(self, what: str, call: Any) -> None:
        tx_hash = self._send(what, call)
        receipt = self._rpc(f"{what} receipt", lambda: self._wait(tx_hash))
        if int(receipt["status"]) != 1:
            raise RewardsTxReverted(f"{what}: tx {HexBytes(tx_hash).to_0x_hex()} reverted")

    def _raise_revert(self, what: str, exc: Exception) -> NoReturn:
        raise_revert(what, exc, self._errors)


def _address(value: str) -> str:
    """Checksummed address, or a RewardsError naming the bad input."""
    try:
        return str(Web3.to_checksum_address(value))
    except (ValueError, TypeError):
        raise RewardsError(f"not an EVM address: {value!r}") from None


def _claim_args(
    epoch: int,
    account: str,
    cumulative: int,
    leaf_index: int,
    tree_size: int,
    proof: Sequence[bytes],
) -> tuple[Any, ...]:
    """The claim()/claimable() arguments after the gateway, range-checked
    so that bad input fails here with its name, not as an ABI encoding error."""
    if not 1 <= epoch <= UINT64_MAX:
        raise UnknownEpoch(epoch)
    for name, value in (("cumulative", cumulative), ("leaf index", leaf_index), ("tree size", tree_size)):
        if not 0 <= value <= UINT256_MAX:
            raise RewardsError(f"{name} {value} outside uint256")
    for i, p in enumerate(proof):
        if len(p) != 32:
            raise RewardsError(f"proof element {i} is {len(p)} bytes, expected 32")
    return (epoch, _address(account), cumulative, leaf_index, tree_size, [bytes(p) for p in proof])
