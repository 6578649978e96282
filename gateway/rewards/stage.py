"""The rewards pipeline stage of a running gateway: close epochs, settle them, announce them.

Constructed by gateway/service.py when the config has a [rewards] table and
stepped on every pipeline pass after the anchorer.  It has its own database
connection like every stage.  Events for integrators go to
``surge/v1/_gateway/<gateway id>/epochs`` (docs/protocol.md "Reward epochs"):
``closed``, ``confirmed``, ``reorged``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.chain import ChainBackend, Web3Chain, load_chain_key, load_keystore
from gateway.config import GatewayConfig
from gateway.rewards.closer import EpochCloser, StoredEpoch, epochs
from gateway.rewards.settings import RewardsConfig
from gateway.rewards.settler import EpochAnchor, Settler
from gateway.store import Store
from surge_protocol import topics

log = logging.getLogger("surge.gateway.rewards")

# Epoch files up to this size travel inside the `closed` event; larger ones
# only through epochs_dir / `surge rewards epoch` (MQTT messages are not files).
INLINE_FILE_BYTES = 256 * 1024


def epochs_topic(gateway_id: str) -> str:
    return topics.gateway_topic(gateway_id, "epochs")


def event_message(event: str, e: StoredEpoch, a: EpochAnchor | None) -> bytes:
    import hashlib

    body: dict[str, Any] = {
        "v": 1,
        "event": event,
        "epoch": e.header,
        "file_sha256": hashlib.sha256(e.file).hexdigest(),
    }
    if a is not None:
        body["chain"] = a.chain_fields()
        if event == "confirmed":
            body["chain_signature"] = a.attestation.hex() if a.attestation else None
    if event == "closed" and len(e.file) <= INLINE_FILE_BYTES:
        body["epoch_file"] = e.file.decode()
    return json.dumps(body, separators=(",", ":")).encode()


def write_epoch_file(directory: str, e: StoredEpoch) -> Path:
    """epoch-<n>.json, written whole (temporary file, fsync, rename)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / ("epoch-%d.json" % e.epoch)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(e.file)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def open_rewards(cfg: GatewayConfig, rc: RewardsConfig, store: Store, anchor_chain: ChainBackend) -> Any:
    """The SurgeRewards client on the gateway's chain, with the gateway's own chain key."""
    from gateway.rewards.open import open_rewards_chain

    if cfg.chain == "memory":
        if not isinstance(anchor_chain, Web3Chain):
            raise ValueError("rewards on the in-process chain need the gateway's in-process chain")
        # The in-process chain's key is made by open_chain and lives only in it;
        # rewards must be published by that same key: the chain lends its
        # transaction signer (address and signing only; epochs are signed
        # through anchor_chain.attest).
        return open_rewards_chain("memory", key=anchor_chain.tx_signer, anchor_chain=anchor_chain)
    key = load_keystore(cfg.keystore) if cfg.keystore else load_chain_key()
    remembered = store.meta("rewards_contract:" + cfg.chain)
    contract = rc.contract or remembered
    token = rc.token or (store.meta("rewards_token:" + cfg.chain) if remembered and not rc.contract else None)
    chain = open_rewards_chain(
        cfg.chain,
        key=key,
        contract=contract,
        token=token,
        anchor_chain=anchor_chain if isinstance(anchor_chain, Web3Chain) else None,
    )
    if contract is None:
        store.set_meta("rewards_contract:" + cfg.chain, chain.contract_address)
        store.set_meta("rewards_token:" + cfg.chain, chain.token_address)
        log.info(
            "deployed SurgeRewards at %s (token %s) on chain %d",
            chain.contract_address,
            chain.token_address,
            chain.chain_id,
        )
    return chain


class RewardsStage:
    def __init__(
        self,
        cfg: GatewayConfig,
        gateway_id: str,
        anchor_chain: ChainBackend,
        publish: Callable[[str, bytes], None],
        registry: CollectorRegistry | None = None,
    ) -> None:
        rc: RewardsConfig = cfg.rewards
        self.cfg = rc
        self.store = Store(cfg.db)
        self.gateway_id = gateway_id
        self.publish = publish
        self.chain = open_rewards(cfg, rc, self.store, anchor_chain)
        if self.chain.gateway_address != anchor_chain.gateway_address:
            raise ValueError("the rewards publisher key must be the gateway's chain key")
        self.mine = cfg.chain == "memory"
        self.closer = EpochCloser(
            self.store, gateway_id, anchor_chain.gateway_address, rc.formula, rc.epoch_seconds, anchor_chain.attest
        )
        self.settler = Settler(
            self.store,
            self.chain,
            cfg.confirmations,
            anchor_chain.attest,
            self._event,
            drop_after_s=cfg.anchor_timeout_s,
        )
        self.failing = False
        r = registry or CollectorRegistry()
        self.closed = Counter("surge_reward_epochs_closed", "Reward epochs closed", registry=r)
        self.confirmed = Counter("surge_reward_epochs_confirmed", "Reward epoch roots confirmed on chain", registry=r)
        self.reorged = Counter("surge_reward_epochs_reorged", "Confirmed epoch roots lost to a reorg", registry=r)
        self.pending = Gauge("surge_reward_epochs_pending", "Closed epochs not yet confirmed on chain", registry=r)
        if rc.epochs_dir:
            for e in epochs(self.store):  # files a crash kept from being written
                if not (Path(rc.epochs_dir) / ("epoch-%d.json" % e.epoch)).exists():
                    write_epoch_file(rc.epochs_dir, e)

    def _event(self, event: str, e: StoredEpoch, a: EpochAnchor | None) -> None:
        {"confirmed": self.confirmed, "reorged": self.reorged}[event].inc()
        self.publish(epochs_topic(self.gateway_id), event_message(event, e, a))

    def step(self, now: float | None = None) -> None:
        """One pass; a failure is logged once per episode and retried, never stopping the other stages."""
        try:
            self._step(time.time() if now is None else now)
            if self.failing:
                log.info("reward epoch passes succeed again")
            self.failing = False
        except Exception:
            if not self.failing:
                log.exception("reward epoch pass failed; retrying quietly until it succeeds")
            self.failing = True

    def _step(self, now: float) -> None:
        for e in self.closer.step(now):
            self.closed.inc()
            if self.cfg.epochs_dir:
                write_epoch_file(self.cfg.epochs_dir, e)
            self.publish(epochs_topic(self.gateway_id), event_message("closed", e, None))
        waiting = self.settler.pending()
        if self.mine and waiting:
            # As for batch anchors (gateway/service.py): the in-process chain makes
            # blocks only for transactions, so one empty block per pass stands in
            # for block time while an epoch waits for its confirmations.
            self.chain.mine(1)
        self.settler.step(now)
        self.pending.set(self.settler.pending())
