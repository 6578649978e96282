"""Transactions and RPC plumbing shared by the contract clients (SurgeAnchor, SurgeRewards).

One place for what every client on one chain does the same way: build,
sign and broadcast a transaction (nonce from the pending count, gas from
the node's estimate plus a margin), wait for its receipt, deploy an
artifact, and turn web3's exceptions into :mod:`gateway.chain.errors`:
transport failures become :class:`ChainUnavailable`, contract reverts are
handed to the client, which knows its contract's custom errors.

:class:`TxSigner` is the narrow face of a key that these clients need: its
address and transaction signing.  A client hands it on (``tx_signer``) so
that another contract client can send with the same key without reaching
into the key object itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NoReturn, Protocol, TypeVar
from urllib.parse import urlsplit

import requests
from eth_tester.exceptions import TransactionFailed  # type: ignore[import-untyped]
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import (
    BlockNotFound,
    ContractLogicError,
    ProviderConnectionError,
    RequestTimedOut,
    TimeExhausted,
    TransactionNotFound,
    Web3RPCError,
)
from web3.providers.eth_tester import EthereumTesterProvider

from .artifacts import Artifact
from .errors import ChainError, ChainUnavailable

T = TypeVar("T")

# Headroom over eth_estimateGas: a call's path may depend on state that
# moves between the estimate and the block that includes it.
GAS_MARGIN_NUM, GAS_MARGIN_DEN = 6, 5
RECEIPT_TIMEOUT_S = 120.0
# Exceptions that mean "the endpoint did not answer", whatever the transport.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ProviderConnectionError,
    RequestTimedOut,
    TimeExhausted,
    ConnectionError,
    TimeoutError,
    OSError,
)

OnRevert = Callable[[str, Exception], NoReturn]


class TxSigner(Protocol):
    """What sending a transaction needs of a key (gateway.chain.keys.ChainKey is one)."""

    @property
    def address(self) -> str: ...

    def sign_transaction(self, tx: Mapping[str, Any]) -> bytes: ...


class BoundSigner:
    """A key's address and transaction signing, and nothing else (no message
    signing, no export): what a client hands another client that sends with the same key."""

    __slots__ = ("_address", "_sign")

    def __init__(self, signer: TxSigner) -> None:
        self._address = str(signer.address)
        self._sign = signer.sign_transaction

    @property
    def address(self) -> str:
        return self._address

    def sign_transaction(self, tx: Mapping[str, Any]) -> bytes:
        return self._sign(tx)

    def __repr__(self) -> str:
        return f"BoundSigner({self._address})"


def redact_endpoint(url: str) -> str:
    """``scheme://host:port`` only: paths, queries and userinfo of RPC URLs
    commonly carry provider API keys, which must not reach logs."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def selector(abi_entry: dict[str, Any]) -> bytes:
    """The 4-byte selector of an ABI function or error entry."""
    types = ",".join(str(i["type"]) for i in abi_entry["inputs"])
    return bytes(Web3.keccak(text=f"{abi_entry['name']}({types})")[:4])


def revert_data(exc: BaseException) -> bytes:
    """The ABI-encoded revert data behind a revert exception, or b"".

    JSON-RPC nodes hand it to web3 as ``ContractLogicError.data`` (hex). The
    eth-tester provider instead re-raises a TransactionFailed whose text is a
    repr of the bytes; the bytes themselves survive in the exception chain
    (py-evm's Revert), so walk it rather than parse the message.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ContractLogicError) and isinstance(e.data, str):
            if e.data.startswith("0x"):
                return bytes(HexBytes(e.data))
        for arg in e.args[:1]:
            if isinstance(arg, bytes):
                return arg
            if isinstance(arg, BaseException):
                todo.append(arg)
        todo.extend([e.__cause__, e.__context__])
    return b""


@contextmanager
def translating(endpoint: str, what: str, on_revert: OnRevert) -> Iterator[None]:
    """Map web3/transport exceptions to ChainError subclasses.

    Raised ``from None``: the originals quote URLs (API keys) and carry long
    tracebacks; the message says all the caller can act on.  Reverts go to
    ``on_revert``, which raises the contract's typed error.
    """
    try:
        yield
    except ChainError:
        raise
    except (ContractLogicError, TransactionFailed) as exc:
        on_revert(what, exc)
    except TRANSPORT_ERRORS as exc:
        raise ChainUnavailable(
            f"{what}: chain endpoint {redact_endpoint(endpoint)} unavailable ({type(exc).__name__})"
        ) from None
    except Web3RPCError as exc:
        raise ChainError(f"{what}: node returned an error: {exc.message}") from None


class TxSender:
    """Builds, signs and broadcasts transactions for one signer."""

    def __init__(self, w3: Web3, signer: TxSigner, endpoint: str) -> None:
        self._w3 = w3
        self._signer = signer
        self._endpoint = endpoint

    def _base(self) -> dict[str, Any]:
        # "pending" so that back-to-back submissions do not reuse a nonce;
        # after a drop the pending count falls back and the nonce is reused,
        # which is exactly what a resubmission wants.
        nonce = self._w3.eth.get_transaction_count(self._signer.address, "pending")  # type: ignore[arg-type]
        return {"from": self._signer.address, "nonce": nonce, "chainId": int(self._w3.eth.chain_id)}

    def send(self, call: Any) -> bytes:
        tx: dict[str, Any] = dict(call.build_transaction(self._base()))
        tx["gas"] = int(tx["gas"]) * GAS_MARGIN_NUM // GAS_MARGIN_DEN
        return bytes(self._w3.eth.send_raw_transaction(self._signer.sign_transaction(tx)))

    def wait(self, tx_hash: bytes, timeout: float = RECEIPT_TIMEOUT_S) -> Any:
        """The receipt once mined; ChainError if the transaction reverted."""
        receipt = self._w3.eth.wait_for_transaction_receipt(HexBytes(tx_hash), timeout=timeout, poll_latency=0.1)
        if int(receipt["status"]) != 1:
            raise ChainError(f"transaction {HexBytes(tx_hash).to_0x_hex()} reverted")
        return receipt

    def deploy(self, artifact: Artifact, *args: Any) -> str:
        """Deploy ``artifact`` with constructor ``args``, wait until mined; its address."""
        factory = self._w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        started = time.monotonic()
        try:
            receipt = self.wait(self.send(factory.constructor(*args)))
        except ChainError:
            raise
        except TRANSPORT_ERRORS as exc:
            raise ChainUnavailable(
                f"deploy {artifact.name}: chain endpoint {redact_endpoint(self._endpoint)} "
                f"unavailable ({type(exc).__name__}) after {time.monotonic() - started:.1f}s"
            ) from None
        except Web3RPCError as exc:
            raise ChainError(f"deploy {artifact.name}: node returned an error: {exc.message}") from None
        return str(receipt["contractAddress"])


class ContractClient:
    """What a contract client bound to one signer on one chain shares: the
    endpoint, translated RPC calls, receipts, blocks, sending, dev-chain mining.

    Subclasses implement :meth:`_raise_revert` for their contract's errors.
    """

    def __init__(self, w3: Web3, signer: TxSigner, endpoint: str) -> None:
        self._w3 = w3
        self._signer = signer
        self._endpoint = endpoint
        self._chain_id: int = self._rpc("eth_chainId", lambda: int(w3.eth.chain_id))

    @property
    def chain_id(self) -> int:
        return self._chain_id

    @property
    def gateway_address(self) -> str:
        return str(self._signer.address)

    @property
    def tx_signer(self) -> TxSigner:
        """This client's key as another client needs it: address and transaction signing only."""
        return BoundSigner(self._signer)

    @property
    def endpoint(self) -> str:
        return redact_endpoint(self._endpoint)

    @property
    def web3(self) -> Web3:
        return self._w3

    def head(self) -> int:
        return self._rpc("eth_blockNumber", lambda: int(self._w3.eth.block_number))

    def is_canonical(self, block_number: int, block_hash: bytes) -> bool:
        def fetch() -> bytes | None:
            try:
                return bytes(self._w3.eth.get_block(block_number)["hash"])
            except BlockNotFound:
                return None

        return self._rpc("get block", fetch) == bytes(block_hash)

    def mine(self, blocks: int = 1) -> None:
        """Mine empty blocks so confirmations advance (dev chains only)."""
        provider = self._w3.provider
        if isinstance(provider, EthereumTesterProvider):
            tester: Any = provider.ethereum_tester
            tester.mine_blocks(blocks)
            return
        for _ in range(blocks):
            self._rpc("evm_mine", lambda: self._raw("evm_mine", []))

    # ------------------------------------------------------------- plumbing

    def _raise_revert(self, what: str, exc: Exception) -> NoReturn:
        raise ChainError(f"{what}: contract reverted (revert data {revert_data(exc)[:4].hex() or 'empty'})") from None

    def _rpc(self, what: str, fn: Callable[[], T]) -> T:
        with translating(self._endpoint, what, self._raise_revert):
            return fn()
        raise AssertionError("unreachable")  # pragma: no cover - for mypy

    def _raw(self, method: str, params: list[Any]) -> Any:
        response: Any = self._w3.provider.make_request(method, params)  # type: ignore[arg-type]
        if "error" in response:
            raise ChainError(f"{method} failed: {response['error'].get('message', '?')}")
        return response.get("result")

    def _sender(self, signer: TxSigner | None = None) -> TxSender:
        return TxSender(self._w3, signer or self._signer, self._endpoint)

    def _send(self, what: str, call: Any, signer: TxSigner | None = None) -> bytes:
        sender = self._sender(signer)
        return self._rpc(what, lambda: sender.send(call))

    def _wait(self, tx_hash: bytes) -> Any:
        """The receipt once mined, whatever its status."""
        return self._w3.eth.wait_for_transaction_receipt(HexBytes(tx_hash), timeout=RECEIPT_TIMEOUT_S, poll_latency=0.1)

    def _mined_receipt(self, tx_hash: bytes) -> Any | None:
        """The receipt, or None while pending or when dropped/reorganised away."""

        def fetch() -> Any:
            try:
                return self._w3.eth.get_transaction_receipt(HexBytes(tx_hash))
            except TransactionNotFound:
                return None

        r = self._rpc("get receipt", fetch)
        return None if r is None or r.get("blockNumber") is None else r

    def _event_tx(self, address: str, topics: list[Any], from_block: int) -> bytes | None:
        """Hash of the latest canonical tx whose log at ``address`` matches ``topics``, or None."""
        logs = self._rpc(
            "eth_getLogs",
            lambda: self._w3.eth.get_logs(
                {"address": address, "fromBlock": from_block, "toBlock": "latest", "topics": topics}  # type: ignore[typeddict-item]
            ),
        )
        return bytes(logs[-1]["transactionHash"]) if logs else None
