"""Gas per SurgeRewards.claim() against real reward trees of N leaves.

    python -m gateway.rewards.gas [--leaves 10000] [--claims 8] [--json]

Builds a real RFC 9162 tree over N (owner, cumulative) leaves (random owner
addresses, amounts of 0.001 to 1000 tokens of 18 decimals, sorted by owner
as the epoch closer does), publishes it on a fresh in-process EVM and sends
claims for sampled leaves (always including leaf 0, whose proof is the
longest). Two cases, as an owner meets them:

* first claim: neither ``claimed`` nor the owner's token balance has been
  written before (both zero to non-zero, the dear storage case);
* repeat claim: a later epoch whose root raised those owners' cumulative
  amounts, claimed by the same owners (both words non-zero to non-zero).

The reference is Uniswap's merkle-distributor (95,256 gas worst case, 78,598
on average at 100k leaves; its proof is 17 keccak siblings, ours 14 SHA-256
siblings at 10k leaves and 20 at 1M).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass

from hexbytes import HexBytes

from surge_protocol import merkle
from gateway.chain.keys import ChainKey
from gateway.chain.open import fund_memory_account

from .chain import Web3RewardsChain
from .open import open_rewards_chain

UNISWAP_WORST = 95_256
UNISWAP_MEAN = 78_598
UNISWAP_LEAVES = 100_000


@dataclass(frozen=True)
class ClaimGas:
    leaves: int
    proof_length: int  # siblings in the longest sampled proof
    claims: int  # claims sampled per case
    first_mean: float
    first_min: int
    first_max: int
    repeat_mean: float
    repeat_min: int
    repeat_max: int
    calldata_mean: float  # calldata bytes of a first claim, mean
    tree_seconds: float  # Python time to hash leaves and build both trees
    first_gas: list[int]
    repeat_gas: list[int]


def _tree(raw: list[bytes], amounts: list[int]) -> merkle.MerkleTree:
    # leaf_data()'s bytes, built directly: checksumming a million addresses
    # (one keccak each) would cost more than the whole tree.
    return merkle.MerkleTree([merkle.leaf_hash(a + c.to_bytes(32, "big")) for a, c in zip(raw, amounts)])


def _claims(
    rc: Web3RewardsChain,
    key: ChainKey,
    epoch: int,
    tree: merkle.MerkleTree,
    owners: list[str],
    amounts: list[int],
    picks: list[int],
) -> tuple[list[int], list[int], int]:
    gas: list[int] = []
    calldata: list[int] = []
    longest = 0
    for i in picks:
        proof = tree.proof(i)
        longest = max(longest, len(proof))
        tx, used = rc.claim(key, epoch, owners[i], amounts[i], i, tree.size, proof)
        gas.append(used)
        calldata.append(len(rc.web3.eth.get_transaction(HexBytes(tx))["input"]))
    return gas, calldata, longest


def measure_claims(leaves: int = 10_000, claims: int = 8, seed: int = 13) -> ClaimGas:
    """Publish two epochs of ``leaves`` leaves and measure ``claims`` claims of each."""
    if leaves < 1 or not 1 <= claims <= leaves:
        raise ValueError("need leaves >= 1 and 1 <= claims <= leaves")
    rng = random.Random(seed)
    started = time.perf_counter()
    raw = sorted(rng.randbytes(20) for _ in range(leaves))
    owners = ["0x" + a.hex() for a in raw]
    amounts = [rng.randrange(10**15, 10**21) for _ in range(leaves)]
    picks = [0] + rng.sample(range(1, leaves), claims - 1) if leaves > 1 else [0]
    tree1 = _tree(raw, amounts)
    # Epoch 2: the sampled owners earned more; everyone else is unchanged.
    amounts2 = list(amounts)
    for i in picks:
        amounts2[i] += rng.randrange(10**15, 10**18)
    tree2 = _tree(raw, amounts2)
    tree_seconds = time.perf_counter() - started

    gateway = ChainKey.generate()
    rc = open_rewards_chain("memory", gateway)
    claimer = ChainKey.generate()
    fund_memory_account(rc.web3, claimer.address)
    rc.publish(1, tree1.root, tree1.size, sum(amounts))
    first, calldata, longest = _claims(rc, claimer, 1, tree1, owners, amounts, picks)
    rc.publish(2, tree2.root, tree2.size, sum(amounts2))
    repeat, _, _ = _claims(rc, claimer, 2, tree2, owners, amounts2, picks)
    return ClaimGas(
        leaves=leaves,
        proof_length=longest,
        claims=len(picks),
        first_mean=sum(first) / len(first),
        first_min=min(first),
        first_max=max(first),
        repeat_mean=sum(repeat) / len(repeat),
        repeat_min=min(repeat),
        repeat_max=max(repeat),
        calldata_mean=sum(calldata) / len(calldata),
        tree_seconds=tree_seconds,
        first_gas=first,
        repeat_gas=repeat,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--leaves", type=int, default=10_000, help="leaves in the tree (default 10000)")
    parser.add_argument("--claims", type=int, default=8, help="claims sampled per case (default 8)")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = parser.parse_args(argv)
    g = measure_claims(args.leaves, args.claims)
    if args.json:
        json.dump(asdict(g), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(
        f"claim() at {g.leaves:,} leaves (proof {g.proof_length} siblings, {g.claims} claims each):\n"
        f"  first claim:  mean {g.first_mean:,.0f} gas (min {g.first_min:,}, max {g.first_max:,})\n"
        f"  repeat claim: mean {g.repeat_mean:,.0f} gas (min {g.repeat_min:,}, max {g.repeat_max:,})\n"
        f"  calldata:     {g.calldata_mean:.0f} bytes\n"
        f"  Uniswap merkle-distributor at {UNISWAP_LEAVES:,} leaves: mean {UNISWAP_MEAN:,}, "
        f"worst {UNISWAP_WORST:,}; first-claim mean ratio {g.first_mean / UNISWAP_MEAN:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
