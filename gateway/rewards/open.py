"""Open the SurgeRewards client on the in-process EVM or a JSON-RPC node (deploying it if asked).

See gateway/chain/README.md ("Deployment and funding") for what a fresh
deployment does; the client itself is gateway/rewards/chain.py.
"""

from __future__ import annotations

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.providers.rpc import HTTPProvider

from gateway.chain.errors import ChainError
from gateway.chain.keys import ChainKey, load_chain_key
from gateway.chain.open import MEMORY, fund_memory_account, memory_web3
from gateway.chain.tx import TxSigner, redact_endpoint
from gateway.chain.web3_chain import Web3Chain

from .chain import DEFAULT_SUPPLY, Web3RewardsChain

__all__ = ["open_rewards_chain"]


def open_rewards_chain(
    spec: str,
    key: TxSigner | LocalAccount | None = None,
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
    * ``key``: the gateway's chain key, or the narrow signer of the anchor
      chain (``anchor_chain.tx_signer``): only its address and transaction
      signing are used. Default: a fresh key for a fresh
      memory chain, ``$SURGE_CHAIN_KEY`` for JSON-RPC. On the memory chain an
      unfunded key is given ether.
    """
    gateway_key: TxSigner | None = ChainKey(key) if isinstance(key, LocalAccount) else key
    if spec == MEMORY:
        if anchor_chain is not None:
            if gateway_key is None:
                raise ChainError("open_rewards_chain: give the gateway key of the anchor chain")
            w3 = anchor_chain.web3
        else:
            if contract is not None:
                raise ChainError("a fresh memory chain is empty: pass anchor_chain to attach to its contracts")
            w3 = memory_web3()
        if gateway_key is None:
            gateway_key = ChainKey.generate()
        if int(w3.eth.get_balance(Web3.to_checksum_address(gateway_key.address))) == 0:
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
        raise ChainError(f"unknown chain spec {redact_endpoint(spec)!r}: expected 'memory' or an http(s):// URL")
    if contract is None:
        return Web3RewardsChain.deploy(w3, gateway_key, spec, token=token, supply=supply, fund=fund)
    return Web3RewardsChain(w3, gateway_key, contract, spec, token)
