"""Open a chain backend from a spec string: ``memory`` or a JSON-RPC URL.

``memory`` is the embedded default: a private in-process EVM (eth-tester on
py-evm) that lives as long as the process, with SurgeAnchor freshly deployed
and the gateway key authorised. It is for development, tests and benchmarks;
anchors on it prove nothing to anyone else.

For ``http(s)://`` endpoints the contract address is either given, or the
contract is deployed with the gateway key (which becomes its owner and is
authorised); the caller must then remember ``chain.contract_address``.
"""

from __future__ import annotations

from typing import Any

from eth_tester import EthereumTester, PyEVMBackend  # type: ignore[import-untyped]
from web3 import Web3
from web3.providers.eth_tester import EthereumTesterProvider
from web3.providers.rpc import HTTPProvider

from .errors import ChainError
from .keys import ChainKey, load_chain_key
from .tx import redact_endpoint
from .web3_chain import Web3Chain

MEMORY = "memory"
# A tenth of what eth-tester pre-funds its first account with: plenty for
# millions of anchors, and room for a few more funded gateway keys.
_MEMORY_FUNDING_WEI = 10**23


def memory_web3() -> Web3:
    """A fresh in-process chain (auto-mining: one block per transaction)."""
    return Web3(EthereumTesterProvider(EthereumTester(PyEVMBackend())))


def fund_memory_account(w3: Web3, address: str, wei: int = _MEMORY_FUNDING_WEI) -> None:
    """Give ``address`` ether from eth-tester's pre-funded, unlocked account."""
    provider = w3.provider
    if not isinstance(provider, EthereumTesterProvider):
        raise ChainError("fund_memory_account needs the in-process chain")
    tester: Any = provider.ethereum_tester
    funder = tester.get_accounts()[0]
    tester.send_transaction({"from": funder, "to": address, "value": wei, "gas": 21000, "gas_price": 10**10})


def open_chain(
    spec: str,
    key: ChainKey | None = None,
    contract: str | None = None,
    *,
    timeout: float = 10.0,
) -> Web3Chain:
    """Open ``spec`` (``"memory"`` or ``"http://host:port"``) for gateway ``key``.

    Without ``key``: a fresh random key for ``memory``; for JSON-RPC the key
    from ``$SURGE_CHAIN_KEY`` (use :func:`load_chain_key` for a keystore).
    Raises ChainUnavailable if the endpoint does not answer.
    """
    if spec == MEMORY:
        if contract is not None:
            raise ChainError("the memory chain is created empty: no contract address to attach to")
        gateway_key = key or ChainKey.generate()
        w3 = memory_web3()
        fund_memory_account(w3, gateway_key.address)
        return Web3Chain.deploy(w3, gateway_key, MEMORY)
    if spec.startswith(("http://", "https://")):
        gateway_key = key or load_chain_key()
        provider = HTTPProvider(
            spec,
            request_kwargs={"timeout": timeout},
            # No silent retry loop inside web3: the anchoring stage owns the
            # retry policy and must see an outage at once.
            exception_retry_configuration=None,
        )
        w3 = Web3(provider)
        if contract is None:
            return Web3Chain.deploy(w3, gateway_key, spec)
        return Web3Chain(w3, gateway_key, contract, spec)
    # The spec may be a URL with an API key in it: show only its scheme/host.
    raise ChainError(f"unknown chain spec {redact_endpoint(spec)!r}: expected 'memory' or an http(s):// URL")
