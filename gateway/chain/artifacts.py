"""Load the committed compiled contracts (written by ``compile.mjs``).

The gateway reads these JSON files at run time so that it never needs Node
or a Solidity compiler; ``tests/test_chain_artifact.py`` keeps them honest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str
    compiler_version: str


def load_artifact(name: str) -> Artifact:
    """Return the artifact of contract ``name`` (``SurgeAnchor``/``Baseline``)."""
    text = resources.files("gateway.chain").joinpath(f"{name}.json").read_text("utf-8")
    raw = json.loads(text)
    return Artifact(
        name=raw["contractName"],
        abi=raw["abi"],
        bytecode=raw["bytecode"],
        deployed_bytecode=raw["deployedBytecode"],
        compiler_version=raw["compiler"]["version"],
    )
