"""The SurgeRewards client: publish epoch roots, read them, claim (in-process EVM and JSON-RPC).

:func:`open_rewards_chain` opens the contracts on ``"memory"`` (the
in-process EVM; pass the gateway's ``anchor_chain`` so SurgeRewards lives on
the *same* chain instance as SurgeAnchor) or on an ``http(s)://`` JSON-RPC
node. Without a contract address it deploys SurgeToken (whole supply minted
to ``key``) and SurgeRewards, authorises ``key`` as a publishing gateway and
funds the rewards contract with tokens; see gateway/chain/README.md.

Like :mod:`gateway.chain.web3_chain`, every call goes through one translating
layer: transport failures become ``ChainUnavailable``, contract reverts the
typed errors of :mod:`gateway.rewards.chain_errors`, decoded by selector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn, Protocol, TypeVar

from eth_abi.abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_tester.exceptions import TransactionFailed  # type: ignore[import-untyped]
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import (
    BlockNotFound,
    ContractLogicError,
    TransactionNotFound,
    Web3RPCError,
)
from web3.providers.eth_tester import EthereumTesterProvider
from web3.providers.rpc import HTTPProvider

from gateway.chain.artifacts import Artifact, load_artifact
from gateway.chain.backend import Receipt
from gateway.chain.errors import ChainError, ChainUnavailable, NotAuthorized
from gateway.chain.keys import ChainKey, load_chain_key
from gateway.chain.open import MEMORY, fund_memory_account, memory_web3
from gateway.chain.web3_chain import (
    _TRANSPORT_ERRORS,
    Web3Chain,
    _revert_data,
    _selector,
    _Sender,
    redact_endpoint,
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
)

__all__ = [
    "DEFAULT_SUPPLY",
    "RewardsChain",
    "Web3RewardsChain",
    "leaf_data",
    "open_rewards_chain",
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

T = TypeVar("T")

UINT64_MAX = 2**64 - 1
UINT256_MAX = 2**256 - 1
# SurgeRewards keeps a gateway's outstanding amount in 191 bits of one word.
MAX_TOTAL = 2**191 - 1
# One billion tokens of 18 decimals: the SurgeToken supply a fresh deployment
# mints, all of which goes to the rewards contract unless `fund` says less.
DEFAULT_SUPPLY = 10**9 * 10**18
_RECEIPT_TIMEOUT = 120.0


def leaf_data(account: str, cumulative: int) -> bytes:
    """The 52 leaf bytes: abi.encodePacked(address account, uint256 cumulative)."""
    if not 0 <= cumulative <= UINT256_MAX:
        raise RewardsError(f"cumulative {cumulative} outside uint256")
    return bytes(HexBytes(_address(account))) + cumulative.to_bytes(32, "big")


class RewardsChain(Protocol):
    """What the epoch settlement stage and `surge rewards` need of the chain."""

    @property
    def chain_id(self) -> int: ...

    @property
    def contract_address(self) -> str: ...

    @property
    def token_address(self) -> str: ...

    @property
    def gateway_address(self) -> str: ...

    def publish(self, epoch: int, root: bytes, leaves: int, total: int) -> bytes: ...

    def receipt(self, tx_hash: bytes) -> Receipt | None: ...

    def head(self) -> int: ...

    def is_canonical(self, block_number: int, block_hash: bytes) -> bool: ...

    def epoch_tx(self, epoch: int, from_block: int = 0) -> bytes | None: ...

    def last_epoch(self) -> int: ...

    def root_of(self, epoch: int) -> bytes: ...

    def claimed(self, account: str) -> int: ...

    def token_balance(self, account: str) -> int: ...

    def claim(
        self,
        key: LocalAccount | ChainKey,
        epoch: int,
        account: str,
        cumulative: int,
        leaf_index: int,
        tree_size: int,
        proof: list[bytes],
    ) -> tuple[bytes, int]: ...


class Web3RewardsChain:
    """SurgeRewards (and its token) bound to one gateway key on one chain."""

    def __init__(
        self,
        w3: Web3,
        key: ChainKey,
        contract_address: str,
        endpoint: str,
        token_address: str | None = None,
    ) -> None:
        self._w3 = w3
        self._key = key
        self._endpoint = endpoint
        rewards = load_artifact("SurgeRewards")
        token = load_artifact("SurgeToken")
        self._contract: Contract = w3.eth.contract(
            address=Web3.to_checksum_address(contract_address), abi=rewards.abi
        )
        self._published_topic = HexBytes(
            Web3.keccak(text="EpochPublished(address,uint64,bytes32,uint64,uint256)")
        ).to_0x_hex()
        self._errors = _contract_errors()
        self._chain_id: int = self._rpc("eth_chainId", lambda: int(w3.eth.chain_id))
        if token_address is None:
            token_address = str(self._rpc("token", self._contract.functions.token().call))
        self._token: Contract = w3.eth.contract(
            address=Web3.to_checksum_address(token_address), abi=token.abi
        )

    # ----------------------------------------------------------- construction

    @classmethod
    def deploy(
        cls,
        w3: Web3,
        key: ChainKey,
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
        sender = _Sender(w3, key, endpoint)
        with _translating(endpoint, "deploy", _contract_errors()):
            if token is None:
                token = _deploy(w3, sender, load_artifact("SurgeToken"), supply)
                if fund is None:
                    fund = supply
            address = _deploy(w3, sender, load_artifact("SurgeRewards"), _address(token))
        chain = cls(w3, key, address, endpoint, token)
        chain.authorize(key.address)
        if fund:
            chain.fund(fund)
        return chain

    def attach(self, key: ChainKey) -> Web3RewardsChain:
        """Another gateway key on the same chain and contracts."""
        return Web3RewardsChain(
            self._w3, key, self.contract_address, self._endpoint, self.token_address
        )

    def __repr__(self) -> str:
        return (
            f"Web3RewardsChain(endpoint={self.endpoint!r}, chain_id={self._chain_id}, "
            f"contract={self.contract_address}, token={self.token_address}, "
            f"gateway={self.gateway_address})"
        )

    # ------------------------------------------------------------- properties

    @property
    def chain_id(self) -> int:
        return self._chain_id

    @property
    def contract_address(self) -> str:
        return str(self._contract.address)

    @property
    def token_address(self) -> str:
        return str(self._token.address)

    @property
    def gateway_address(self) -> str:
        return self._key.address

    @property
    def endpoint(self) -> str:
        return redact_endpoint(self._endpoint)

    @property
    def web3(self) -> Web3:
        return self._w3

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
        call = self._contract.functions.publish(epoch, bytes(root), leaves, total)
        sender = _Sender(self._w3, self._key, self._endpoint)
        return self._rpc("publish epoch", lambda: sender.send(call))

    def receipt(self, tx_hash: bytes) -> Receipt | None:
        """The receipt, or None while pending or when dropped/reorganised away.

        Raises RewardsTxReverted if the transaction was mined but reverted.
        """

        def fetch() -> Any:
            try:
                return self._w3.eth.get_transaction_receipt(HexBytes(tx_hash))
            except TransactionNotFound:
                return None

        r = self._rpc("get receipt", fetch)
        if r is None or r.get("blockNumber") is None:
            return None
        if int(r["status"]) != 1:
            raise RewardsTxReverted(
                f"rewards tx {HexBytes(tx_hash).to_0x_hex()} reverted in block "
                f"{int(r['blockNumber'])}; check last_epoch()/root_of()/claimed()"
            )
        return Receipt(int(r["blockNumber"]), bytes(r["blockHash"]), int(r["gasUsed"]))

    def head(self) -> int:
        return self._rpc("eth_blockNumber", lambda: int(self._w3.eth.block_number))

    def is_canonical(self, block_number: int, block_hash: bytes) -> bool:
        def fetch() -> bytes | None:
            try:
                return bytes(self._w3.eth.get_block(block_number)["hash"])
            except BlockNotFound:
                return None

        return self._rpc("get block", fetch) == bytes(block_hash)

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
        logs = self._rpc(
            "eth_getLogs",
            lambda: self._w3.eth.get_logs(
                {
                    "address": self._contract.address,
                    "fromBlock": from_block,
                    "toBlock": "latest",
                    "topics": topics,
                }
            ),
        )
        if not logs:
            return None
        # An epoch is published at most once, so at most one log matches.
        return bytes(logs[-1]["transactionHash"])

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
        call = self._contract.functions.claim(self._gw(gateway), *args)
        sender = _Sender(self._w3, signer, self._endpoint)
        tx_hash = self._rpc("claim", lambda: sender.send(call))
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

    # ------------------------------------------- dev chains (memory, hardhat)

    def mine(self, blocks: int = 1) -> None:
        """Mine empty blocks so confirmations advance (dev chains only)."""
        provider = self._w3.provider
        if isinstance(provider, EthereumTesterProvider):
            tester: Any = provider.ethereum_tester
            tester.mine_blocks(blocks)
            return
        for _ in range(blocks):
            self._rpc("evm_mine", lambda: self._w3.provider.make_request("evm_mine", []))  # type: ignore[arg-type]

    # ------------------------------------------------------------- plumbing

    def _gw(self, gateway: str | None) -> str:
        return _address(gateway) if gateway is not None else self.gateway_address

    def _wait(self, tx_hash: bytes) -> Any:
        return self._w3.eth.wait_for_transaction_receipt(
            HexBytes(tx_hash), timeout=_RECEIPT_TIMEOUT, poll_latency=0.1
        )

    def _send_and_wait(self, what: str, call: Any) -> None:
        sender = _Sender(self._w3, self._key, self._endpoint)
        tx_hash = self._rpc(what, lambda: sender.send(call))
        receipt = self._rpc(f"{what} receipt", lambda: self._wait(tx_hash))
        if int(receipt["status"]) != 1:
            raise RewardsTxReverted(f"{what}: tx {HexBytes(tx_hash).to_0x_hex()} reverted")

    def _rpc(self, what: str, fn: Callable[[], T]) -> T:
        with _translating(self._endpoint, what, self._errors):
            return fn()
        raise AssertionError("unreachable")  # pragma: no cover - for mypy


def _contract_errors() -> dict[bytes, dict[str, Any]]:
    """ABI entries of SurgeRewards' and SurgeToken's custom errors, by selector."""
    return {
        _selector(e): e
        for name in ("SurgeRewards", "SurgeToken")
        for e in load_artifact(name).abi
        if e.get("type") == "error"
    }


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


def _deploy(w3: Web3, sender: _Sender, artifact: Artifact, *args: Any) -> str:
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = sender.wait(sender.send(factory.constructor(*args)))
    return str(receipt["contractAddress"])


@contextmanager
def _translating(
    endpoint: str, what: str, errors: dict[bytes, dict[str, Any]] | None = None
) -> Iterator[None]:
    """Map web3/transport exceptions to ChainError subclasses (``from None``:
    the originals may quote URLs with API keys)."""
    try:
        yield
    except ChainError:
        raise
    except (ContractLogicError, TransactionFailed) as exc:
        _raise_revert(what, exc, errors or {})
    except _TRANSPORT_ERRORS as exc:
        raise ChainUnavailable(
            f"{what}: chain endpoint {redact_endpoint(endpoint)} unavailable ({type(exc).__name__})"
        ) from None
    except Web3RPCError as exc:
        raise ChainError(f"{what}: node returned an error: {exc.message}") from None


def _raise_revert(what: str, exc: Exception, errors: dict[bytes, dict[str, Any]]) -> NoReturn:
    raw = _revert_data(exc)
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
            f"{what}: token transfer failed (is the rewards contract's token balance "
            "below the amount due?)"
        ) from None
    if name == "TotalDecreased":
        raise TotalDecreased(int(args[0]), int(args[1]), int(args[2])) from None
    if name == "Underfunded":
        raise Underfunded(int(args[0]), int(args[1])) from None
    if name == "ExceedsTotal":
        raise ExceedsTotal(int(args[0]), int(args[1])) from None
    if name == "NotAuthorized":
        raise NotAuthorized(
            f"gateway {Web3.to_checksum_address(args[0])} is not authorised to publish"
        ) from None
    if name == "NotOwner":
        raise NotAuthorized(f"{what}: only the contract owner may do this") from None
    # SurgeToken's errors (InsufficientBalance, InsufficientAllowance, InvalidReceiver).
    raise TokenError(f"{what}: token refused: {name}{tuple(args)}") from None


def open_rewards_chain(
    spec: str,
    key: ChainKey | LocalAccount | None = None,
    contract: str | None = None,
    token: str | None = None,
    anchor_chain: Web3Chain | None = None,
    *,
    supply: int = DEFAULT_SUPPLY,
    fund: int | None = None,
    timeout: float = 10.0,
) -> Web3RewardsChain:
    """Open SurgeRewards on ``spec`` (``"memory"`` or ``"http(s)://host:port"``) for gateway ``key``.

    * ``anchor_chain``: reuse that chain's web3 connection; for ``memory``
      this is how rewards share the one in-process chain with SurgeAnchor.
      Without it ``memory`` starts a fresh in-process chain.
    * ``contract``: attach to a deployed SurgeRewards (its token is read from
      it unless ``token`` is given); otherwise deploy (see
      :meth:`Web3RewardsChain.deploy` for ``supply``/``fund``).
    * ``key``: the gateway's chain key. Default: a fresh key for a fresh
      memory chain, ``$SURGE_CHAIN_KEY`` for JSON-RPC. On the memory chain an
      unfunded key is given ether.
    """
    gateway_key = key if isinstance(key, ChainKey) or key is None else ChainKey(key)
    if spec == MEMORY:
        if anchor_chain is not None:
            if gateway_key is None:
                raise ChainError("open_rewards_chain: give the gateway key of the anchor chain")
            w3 = anchor_chain.web3
        else:
            if contract is not None:
                raise ChainError(
                    "a fresh memory chain is empty: pass anchor_chain to attach to its contracts"
                )
            w3 = memory_web3()
        if gateway_key is None:
            gateway_key = ChainKey.generate()
        if int(w3.eth.get_balance(gateway_key.address)) == 0:
            fund_memory_account(w3, gateway_key.address)
    elif spec.startswith(("http://", "https://")):
        if gateway_key is None:
            gateway_key = load_chain_key()
        if anchor_chain is not None:
            w3 = anchor_chain.web3
        else:
            w3 = Web3(
                HTTPProvider(
                    spec,
                    request_kwargs={"timeout": timeout},
                    # The settlement stage owns the retry policy.
                    exception_retry_configuration=None,
                )
            )
    else:
        raise ChainError(
            f"unknown chain spec {redact_endpoint(spec)!r}: expected 'memory' or an http(s):// URL"
        )
    if contract is None:
        return Web3RewardsChain.deploy(w3, gateway_key, spec, token=token, supply=supply, fund=fund)
    return Web3RewardsChain(w3, gateway_key, contract, spec, token)
