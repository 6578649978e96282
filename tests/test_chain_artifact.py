"""The committed contract artifacts are exactly what the pinned solc builds.

Runs `npm ci` (package-lock.json pins solc), recompiles with
gateway/chain/compile.mjs into a temporary directory and compares with the
committed SurgeAnchor.json, Baseline.json, SurgeRewards.json and
SurgeToken.json byte for byte.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from chain_fixtures import CHAIN_DIR, ROOT, node_env, npm_ci

CONTRACTS = ["SurgeAnchor", "Baseline", "SurgeRewards", "SurgeToken"]


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    npm_ci()
    out = tmp_path_factory.mktemp("artifacts")
    proc = subprocess.run(
        ["node", str(CHAIN_DIR / "compile.mjs"), "--out", str(out)],
        cwd=ROOT,
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("name", CONTRACTS)
def test_artifact_matches_fresh_compile(rebuilt: Path, name: str) -> None:
    committed = json.loads((CHAIN_DIR / f"{name}.json").read_text())
    fresh = json.loads((rebuilt / f"{name}.json").read_text())
    assert fresh["abi"] == committed["abi"]
    assert fresh["bytecode"] == committed["bytecode"]
    assert fresh["deployedBytecode"] == committed["deployedBytecode"]
    assert fresh == committed
    assert (rebuilt / f"{name}.json").read_bytes() == (CHAIN_DIR / f"{name}.json").read_bytes()


@pytest.mark.parametrize("name", CONTRACTS)
def test_pragma_solc_and_lockfile_agree(name: str) -> None:
    source = (CHAIN_DIR / f"{name}.sol").read_text()
    pragma = re.search(r"pragma solidity (\d+\.\d+\.\d+);", source)
    assert pragma, "pragma must pin an exact version"
    artifact = json.loads((CHAIN_DIR / f"{name}.json").read_text())
    assert artifact["compiler"]["version"].startswith(pragma.group(1) + "+")
    package = json.loads((ROOT / "package.json").read_text())
    assert package["devDependencies"]["solc"] == pragma.group(1)
    assert str(ROOT) not in json.dumps(artifact), "no machine paths in artifacts"
