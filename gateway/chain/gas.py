"""Gas per anchor: SurgeAnchor.anchor() against the Baseline contract.

Baseline.store() is the floor for "anchor a root": one fresh bytes32 slot and
one event. Both run on the same fresh in-process chain with the committed
artifacts, so the ratio is independent of fee settings.

    python -m gateway.chain.gas [--batches N] [--json]

anchor()'s cost repeats with period 4 (one call in four opens a fresh slot
of packed tree sizes), so the mean is taken over whole periods.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any

from hexbytes import HexBytes
from web3 import Web3

from .artifacts import load_artifact
from .keys import ChainKey
from .open import fund_memory_account, memory_web3
from .web3_chain import Web3Chain


@dataclass(frozen=True)
class GasReport:
    batches: int
    anchor_mean: float
    anchor_min: int
    anchor_max: int
    baseline_mean: float
    ratio: float
    anchor_gas: list[int]
    baseline_gas: list[int]


def _deploy_baseline(w3: Web3, key: ChainKey) -> Any:
    artifact = load_artifact("Baseline")
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    tx = factory.constructor().build_transaction(
        {"from": key.address, "nonce": w3.eth.get_transaction_count(key.address)}
    )
    tx_hash = w3.eth.send_raw_transaction(key.sign_transaction(tx))
    address = w3.eth.wait_for_transaction_receipt(tx_hash)["contractAddress"]
    return w3.eth.contract(address=address, abi=artifact.abi)


def _baseline_store(w3: Web3, key: ChainKey, baseline: Any, slot: int, root: bytes) -> int:
    tx = baseline.functions.store(slot, root).build_transaction(
        {"from": key.address, "nonce": w3.eth.get_transaction_count(key.address)}
    )
    tx_hash = w3.eth.send_raw_transaction(key.sign_transaction(tx))
    return int(w3.eth.wait_for_transaction_receipt(HexBytes(tx_hash))["gasUsed"])


def measure(batches: int = 16) -> GasReport:
    """Anchor ``batches`` roots and store as many in Baseline; report gas used."""
    if batches < 1:
        raise ValueError("batches must be >= 1")
    key = ChainKey.generate()
    w3 = memory_web3()
    fund_memory_account(w3, key.address)
    chain = Web3Chain.deploy(w3, key, "memory")
    baseline = _deploy_baseline(w3, key)

    anchor_gas: list[int] = []
    baseline_gas: list[int] = []
    for seq in range(1, batches + 1):
        # Random roots: calldata gas depends on zero bytes, as on a real chain.
        root = os.urandom(32)
        receipt = chain.receipt(chain.submit(seq, root, 1000 + seq))
        assert receipt is not None  # auto-mined
        anchor_gas.append(receipt.gas_used)
        # A key like a batch seq (mostly zero bytes), written once, like a root.
        baseline_gas.append(_baseline_store(w3, key, baseline, seq, root))

    anchor_mean = sum(anchor_gas) / len(anchor_gas)
    baseline_mean = sum(baseline_gas) / len(baseline_gas)
    return GasReport(
        batches=batches,
        anchor_mean=anchor_mean,
        anchor_min=min(anchor_gas),
        anchor_max=max(anchor_gas),
        baseline_mean=baseline_mean,
        ratio=anchor_mean / baseline_mean,
        anchor_gas=anchor_gas,
        baseline_gas=baseline_gas,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=16, help="anchors to send (default 16)")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = parser.parse_args(argv)
    report = measure(args.batches)
    if args.json:
        json.dump(asdict(report), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(
            f"anchor():  mean {report.anchor_mean:.0f} gas "
            f"(min {report.anchor_min}, max {report.anchor_max}) over {report.batches} batches\n"
            f"baseline:  mean {report.baseline_mean:.0f} gas\n"
            f"ratio:     {report.ratio:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
