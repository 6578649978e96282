"""ChainBackend over web3.py 7: one class for every EVM endpoint.

The in-process chain (eth-tester/py-evm) and any JSON-RPC node differ only
in the web3 provider, so both are served by :class:`Web3Chain`. Each call
goes through ``_rpc`` (gateway/chain/tx.py, shared with the SurgeRewards
client), which turns transport failures into :class:`ChainUnavailable`;
SurgeAnchor's reverts become the typed errors of :mod:`gateway.chain.errors`
here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

from eth_abi.abi import decode as abi_decode
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract

from .artifacts import load_artifact
from .backend import Receipt
from .errors import (
    AlreadyAnchored,
    AnchorReverted,
    ChainError,
    InvalidBatch,
    NotAuthorized,
    SequenceGap,
)
from .keys import ChainKey
from .tx import ContractClient, TxSender, redact_endpoint, revert_data, selector

__all__ = ["Web3Chain", "redact_endpoint"]

UINT64_MAX = 2**64 - 1


class Web3Chain(ContractClient):
    """SurgeAnchor bound to one gateway key on one chain (a ChainBackend)."""

    def __init__(self, w3: Web3, key: ChainKey, contract_address: str, endpoint: str) -> None:
        self._key = key  # also signs attestations (attest), which a TxSigner does not
        self._artifact = load_artifact("SurgeAnchor")
        self._contract: Contract = w3.eth.contract(
            address=Web3.to_checksum_address(contract_address), abi=self._artifact.abi
        )
        self._anchored_topic = HexBytes(Web3.keccak(text="Anchored(address,uint64,bytes32,uint64)")).to_0x_hex()
        self._errors = {selector(e): e for e in self._artifact.abi if e.get("type") == "error"}
        super().__init__(w3, key, endpoint)

    # ----------------------------------------------------------- construction

    @classmethod
    def deploy(cls, w3: Web3, key: ChainKey, endpoint: str) -> Web3Chain:
        """Deploy a fresh SurgeAnchor owned by ``key`` and authorise ``key``."""
        address = TxSender(w3, key, endpoint).deploy(load_artifact("SurgeAnchor"))
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
    def contract_address(self) -> str:
        return str(self._contract.address)

    # -------------------------------------------------------- ChainBackend API

    def submit(self, batch_seq: int, root: bytes, size: int) -> bytes:
        if not 1 <= batch_seq <= UINT64_MAX:
            raise InvalidBatch(f"batch seq {batch_seq} outside 1..2**64-1")
        if len(root) != 32 or root == bytes(32):
            raise InvalidBatch("root must be 32 bytes and not all zero")
        if not 1 <= size <= UINT64_MAX:
            raise InvalidBatch(f"tree size {size} outside 1..2**64-1")
        return self._send("submit anchor", self._contract.functions.anchor(batch_seq, root, size))

    def receipt(self, tx_hash: bytes) -> Receipt | None:
        r = self._mined_receipt(tx_hash)
        if r is None:
            return None
        if int(r["status"]) != 1:
            raise AnchorReverted(
                f"anchoring tx {HexBytes(tx_hash).to_0x_hex()} reverted in block "
                f"{int(r['blockNumber'])}; check last_seq()/root_of()"
            )
        return Receipt(int(r["blockNumber"]), bytes(r["blockHash"]), int(r["gasUsed"]))

    def attest(self, message: bytes) -> bytes:
        return self._key.sign_message(message)

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
        # A seq is anchored at most once, so at most one log matches.
        return self._event_tx(self._contract.address, topics, from_block)

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
        fn = self._contract.functions.isAuthorized(Web3.to_checksum_address(gateway or self.gateway_address))
        return bool(self._rpc("isAuthorized", fn.call))

    def _owner_call(self, call: Any) -> None:
        sender = self._sender()
        tx_hash = self._rpc("owner call", lambda: sender.send(call))
        self._rpc("owner call receipt", lambda: sender.wait(tx_hash))

    # ------------------------------------------------------------- plumbing

    def _raise_revert(self, what: str, exc: Exception) -> NoReturn:
        raw = revert_data(exc)
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
