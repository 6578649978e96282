"""ChainBackend over web3.py 7: one class for every EVM endpoint.

The in-process chain (eth-tester/py-evm) and any JSON-RPC node differ only
in the web3 provider, so both are served by :class:`Web3Chain`. This module
is the only place that touches web3's exception zoo; each call goes through
:meth:`Web3Chain._rpc`, which turns transport failures into
:class:`ChainUnavailable` and contract reverts into the typed errors of
:mod:`gateway.chain.errors`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import requests
from eth_abi.abi import decode as abi_decode
from eth_tester.exceptions import TransactionFailed  # type: ignore[import-untyped]
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
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

from .artifacts import Artifact, load_artifact
from .backend import Receipt
from .errors import (
    AlreadyAnchored,
    AnchorReverted,
    ChainError,
    ChainUnavailable,
    InvalidBatch,
    NotAuthorized,
    SequenceGap,
)
from .keys import ChainKey

T = TypeVar("T")

UINT64_MAX = 2**64 - 1
# Headroom over eth_estimateGas: anchor()'s path depends only on the seq, but
# a node's estimate may be computed against a slightly different state.
GAS_MARGIN_NUM, GAS_MARGIN_DEN = 6, 5
# Exceptions that mean "the endpoint did not answer", whatever the transport.
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ProviderConnectionError,
    RequestTimedOut,
    TimeExhausted,
    ConnectionError,
    TimeoutError,
    OSError,
)


def redact_endpoint(url: str) -> str:
    """``scheme://host:port`` only: paths, queries and userinfo of RPC URLs
    commonly carry provider API keys, which must not reach logs."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def _selector(abi_entry: dict[str, Any]) -> bytes:
    types = ",".join(str(i["type"]) for i in abi_entry["inputs"])
    return bytes(Web3.keccak(text=f"{abi_entry['name']}({types})"))[:4]


class Web3Chain:
    """SurgeAnchor bound to one gateway key on one chain (a ChainBackend)."""

    def __init__(self, w3: Web3, key: ChainKey, contract_address: str, endpoint: str) -> None:
        self._w3 = w3
        self._key = key
        self._endpoint = endpoint
        self._artifact = load_artifact("SurgeAnchor")
        self._contract: Contract = w3.eth.contract(
            address=Web3.to_checksum_address(contract_address), abi=self._artifact.abi
        )
        self._anchored_topic = HexBytes(
            Web3.keccak(text="Anchored(address,uint64,bytes32,uint64)")
        ).to_0x_hex()
        self._errors = {
            _selector(e): e for e in self._artifact.abi if e.get("type") == "error"
        }
        self._chain_id: int = self._rpc("eth_chainId", lambda: int(w3.eth.chain_id))

    # ----------------------------------------------------------- construction

    @classmethod
    def deploy(cls, w3: Web3, key: ChainKey, endpoint: str) -> Web3Chain:
        """Deploy a fresh SurgeAnchor owned by ``key`` and authorise ``key``."""
        probe = _Sender(w3, key, endpoint)
        address = probe.deploy(load_artifact("SurgeAnchor"))
        chain = cls(w3, key, address, endpoint)
        chain.authorize(key.address)
        return chain

    def attach(self, key: ChainKey) -> Web3Chain:
        """Another gateway key on the same chain and contract."""
        return Web3Chain(self._w3, key, self.contract_address, self._endpoint)

    def __repr__(self) -> str:
        return (
            f"Web3Chain(endpoint={self.endpoint!r}, chain_id={self._chain_id}, "
            f"contract={self.contract_address}, gateway={self.gateway_address})"
        )

    # ------------------------------------------------------------- properties

    @property
    def chain_id(self) -> int:
        return self._chain_id

    @property
    def contract_address(self) -> str:
        return str(self._contract.address)

    @property
    def gateway_address(self) -> str:
        return self._key.address

    @property
    def endpoint(self) -> str:
        return redact_endpoint(self._endpoint)

    @property
    def web3(self) -> Web3:
        return self._w3

    # -------------------------------------------------------- ChainBackend API

    def submit(self, batch_seq: int, root: bytes, size: int) -> bytes:
        if not 1 <= batch_seq <= UINT64_MAX:
            raise InvalidBatch(f"batch seq {batch_seq} outside 1..2**64-1")
        if len(root) != 32 or root == bytes(32):
            raise InvalidBatch("root must be 32 bytes and not all zero")
        if not 1 <= size <= UINT64_MAX:
            raise InvalidBatch(f"tree size {size} outside 1..2**64-1")
        call = self._contract.functions.anchor(batch_seq, root, size)
        sender = _Sender(self._w3, self._key, self._endpoint)
        return self._rpc("submit anchor", lambda: sender.send(call))

    def receipt(self, tx_hash: bytes) -> Receipt | None:
        def fetch() -> Any:
            try:
                return self._w3.eth.get_transaction_receipt(HexBytes(tx_hash))
            except TransactionNotFound:
                return None

        r = self._rpc("get receipt", fetch)
        if r is None or r.get("blockNumber") is None:
            return None
        if int(r["status"]) != 1:
            raise AnchorReverted(
                f"anchoring tx {HexBytes(tx_hash).to_0x_hex()} reverted in block "
                f"{int(r['blockNumber'])}; check last_seq()/root_of()"
            )
        return Receipt(int(r["blockNumber"]), bytes(r["blockHash"]), int(r["gasUsed"]))

    def attest(self, message: bytes) -> bytes:
        return self._key.sign_message(message)

    def head(self) -> int:
        return self._rpc("eth_blockNumber", lambda: int(self._w3.eth.block_number))

    def is_canonical(self, block_number: int, block_hash: bytes) -> bool:
        def fetch() -> bytes | None:
            try:
                return bytes(self._w3.eth.get_block(block_number)["hash"])
            except BlockNotFound:
                return None

        return self._rpc("get block", fetch) == bytes(block_hash)

    def anchor_tx(self, batch_seq: int, from_block: int = 0) -> bytes | None:
        """Hash of the canonical tx that anchored our ``batch_seq``, or None.

        Found through the Anchored event (both its gateway and batchSeq are
        indexed), so a gateway that crashed between broadcasting and
        recording the hash can still find its transaction. Pass
        ``from_block`` on long chains whose nodes cap eth_getLogs ranges.
        """
        topics: list[Any] = [
            self._anchored_topic,
            HexBytes(bytes(12) + bytes(HexBytes(self.gateway_address))).to_0x_hex(),
            HexBytes(batch_seq.to_bytes(32, "big")).to_0x_hex(),
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
        # A seq is anchored at most once, so at most one log matches.
        return bytes(logs[-1]["transactionHash"])

    def last_seq(self) -> int:
        fn = self._contract.functions.lastSeq(self.gateway_address)
        return int(self._rpc("lastSeq", fn.call))

    def root_of(self, batch_seq: int) -> bytes:
        fn = self._contract.functions.rootOf(self.gateway_address, batch_seq)
        return bytes(self._rpc("rootOf", fn.call))

    def size_of(self, batch_seq: int) -> int:
        fn = self._contract.functions.sizeOf(self.gateway_address, batch_seq)
        return int(self._rpc("sizeOf", fn.call))

    def verify_inclusion(
        self,
        batch_seq: int,
        leaf_hash: bytes,
        leaf_index: int,
        tree_size: int,
        proof: Sequence[bytes],
        gateway: str | None = None,
    ) -> bool:
        fn = self._contract.functions.verifyInclusion(
            Web3.to_checksum_address(gateway or self.gateway_address),
            batch_seq,
            leaf_hash,
            leaf_index,
            tree_size,
            [bytes(p) for p in proof],
        )
        return bool(self._rpc("verifyInclusion", fn.call))

    # --------------------------------------------------------- owner actions

    def authorize(self, gateway: str) -> None:
        """Owner only: let ``gateway`` anchor (waits until mined)."""
        self._owner_call(self._contract.functions.authorize(Web3.to_checksum_address(gateway)))

    def deauthorize(self, gateway: str) -> None:
        """Owner only: stop ``gateway`` from anchoring (waits until mined)."""
        self._owner_call(self._contract.functions.deauthorize(Web3.to_checksum_address(gateway)))

    def is_authorized(self, gateway: str | None = None) -> bool:
        fn = self._contract.functions.isAuthorized(
            Web3.to_checksum_address(gateway or self.gateway_address)
        )
        return bool(self._rpc("isAuthorized", fn.call))

    def _owner_call(self, call: Any) -> None:
        sender = _Sender(self._w3, self._key, self._endpoint)
        tx_hash = self._rpc("owner call", lambda: sender.send(call))
        self._rpc("owner call receipt", lambda: sender.wait(tx_hash))

    # ------------------------------------------- dev chains (memory, hardhat)

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

    def _raw(self, method: str, params: list[Any]) -> Any:
        response: Any = self._w3.provider.make_request(method, params)  # type: ignore[arg-type]
        if "error" in response:
            raise ChainError(f"{method} failed: {response['error'].get('message', '?')}")
        return response.get("result")

    def _rpc(self, what: str, fn: Callable[[], T]) -> T:
        with self._translate(what):
            return fn()
        raise AssertionError("unreachable")  # pragma: no cover - for mypy

    @contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        """Map web3/transport exceptions to ChainError subclasses.

        Raised ``from None``: the originals quote URLs (API keys) and carry
        long tracebacks; the message below says all the caller can act on.
        """
        try:
            yield
        except ChainError:
            raise
        except (ContractLogicError, TransactionFailed) as exc:
            self._raise_revert(what, exc)
        except _TRANSPORT_ERRORS as exc:
            raise ChainUnavailable(
                f"{what}: chain endpoint {self.endpoint} unavailable ({type(exc).__name__})"
            ) from None
        except Web3RPCError as exc:
            raise ChainError(f"{what}: node returned an error: {exc.message}") from None

    def _raise_revert(self, what: str, exc: Exception) -> NoReturn:
        raw = _revert_data(exc)
        entry = self._errors.get(raw[:4])
        if entry is not None:
            types = [str(i["type"]) for i in entry["inputs"]]
            args = abi_decode(types, bytes(raw[4:]))
            name = entry["name"]
            if name == "AlreadyAnchored":
                raise AlreadyAnchored(int(args[0]), int(args[1])) from None
            if name == "SequenceGap":
                raise SequenceGap(int(args[0]), int(args[1])) from None
            if name == "NotAuthorized":
                raise NotAuthorized(
                    f"gateway {Web3.to_checksum_address(args[0])} is not authorised on this contract"
                ) from None
            if name == "InvalidBatch":
                raise InvalidBatch("contract rejected the batch (zero root, size or seq)") from None
            if name == "NotOwner":
                raise NotAuthorized(f"{what}: only the contract owner may do this") from None
        raise ChainError(f"{what}: contract reverted (revert data {raw[:4].hex() or 'empty'})") from None


def _revert_data(exc: BaseException) -> bytes:
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


class _Sender:
    """Builds, signs and broadcasts transactions for one key."""

    def __init__(self, w3: Web3, key: ChainKey, endpoint: str) -> None:
        self._w3 = w3
        self._key = key
        self._endpoint = endpoint

    def _base(self) -> dict[str, Any]:
        # "pending" so that back-to-back submissions do not reuse a nonce;
        # after a drop the pending count falls back and the nonce is reused,
        # which is exactly what a resubmission wants.
        nonce = self._w3.eth.get_transaction_count(self._key.address, "pending")
        return {"from": self._key.address, "nonce": nonce, "chainId": int(self._w3.eth.chain_id)}

    def send(self, call: Any) -> bytes:
        tx: dict[str, Any] = dict(call.build_transaction(self._base()))
        tx["gas"] = int(tx["gas"]) * GAS_MARGIN_NUM // GAS_MARGIN_DEN
        return bytes(self._w3.eth.send_raw_transaction(self._key.sign_transaction(tx)))

    def wait(self, tx_hash: bytes, timeout: float = 120.0) -> Any:
        receipt = self._w3.eth.wait_for_transaction_receipt(
            HexBytes(tx_hash), timeout=timeout, poll_latency=0.1
        )
        if int(receipt["status"]) != 1:
            raise ChainError(f"transaction {HexBytes(tx_hash).to_0x_hex()} reverted")
        return receipt

    def deploy(self, artifact: Artifact) -> str:
        factory = self._w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        started = time.monotonic()
        try:
            tx_hash = self.send(factory.constructor())
            receipt = self.wait(tx_hash)
        except ChainError:
            raise
        except _TRANSPORT_ERRORS as exc:
            raise ChainUnavailable(
                f"deploy {artifact.name}: chain endpoint {redact_endpoint(self._endpoint)} "
                f"unavailable ({type(exc).__name__}) after {time.monotonic() - started:.1f}s"
            ) from None
        except Web3RPCError as exc:
            raise ChainError(f"deploy {artifact.name}: node returned an error: {exc.message}") from None
        return str(receipt["contractAddress"])
