"""Smallest MicroPython heap at which the esp32 bundle completes a full cycle.

Host-side (CPython): builds the bundle (.py, or .mpy with --mpy), starts a
real Mosquitto and bisects ``micropython -X heapsize=NK DIR/main.py --count 1``
over N.  A run counts as complete when it exits 0 having connected, published
its birth and one acknowledged report with no MemoryError anywhere.  With
``--first-start`` the bundle has no key, so every run also generates one on
the device (what a freshly flashed board does once).

    .venv/bin/python -m tests.portable.heap_bisect [--mpy] [--first-start] [--lo 32] [--hi 256]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from broker import Mosquitto  # noqa: E402

from agent import keyfile  # noqa: E402
from firmware_shim.host import bundle  # noqa: E402


def micropython() -> str:
    here = Path(sys.executable).parent / "micropython"
    return str(here) if here.exists() else (shutil.which("micropython") or "micropython")


def attempt(binary: str, out: Path, kb: int, first_start: bool = False) -> tuple[bool, float]:
    for d in ("outbox", "state"):
        shutil.rmtree(out / d, ignore_errors=True)
    if first_start:
        (out / "esp.key").unlink(missing_ok=True)
    t0 = time.monotonic()
    try:
        # From the bundle's root, as a board runs it (tests/test_agent_micropython.py board_argv).
        proc = subprocess.run([binary, "-X", "heapsize=%dK" % kb, "main.py", "--count", "1"],
                              env=dict(os.environ, MICROPYPATH=".frozen"), capture_output=True,
                              text=True, timeout=20, cwd=out)
    except subprocess.TimeoutExpired:
        # Out of memory while connecting: the agent keeps retrying, as designed.
        return False, time.monotonic() - t0
    text = proc.stdout + proc.stderr
    ok = proc.returncode == 0 and "MemoryError" not in text and "stopped after 1 reports" in text
    return ok, time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mpy", action="store_true")
    ap.add_argument("--first-start", action="store_true", help="the device generates its key in every run")
    ap.add_argument("--lo", type=int, default=32)
    ap.add_argument("--hi", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        mq = Mosquitto(tmp / "mq")
        mq.start()
        try:
            key = keyfile.generate()
            keyfile.write(str(tmp / "esp.key"), key)
            cfg = {"board": "esp32", "fleet": "bench", "broker": {"url": mq.url},
                   "interval": 1, "mounts": ["/"], "net_interface": "sta", "key_file": "esp.key",
                   "bw_probe_bytes": 1024, "reconnect": {"min_s": 0.2, "max_s": 1}}
            (tmp / "esp.json").write_text(json.dumps(cfg))
            out = tmp / "bundle"
            bundle.build("esp32", str(tmp / "esp.json"), str(out), args.mpy, str(tmp / "esp.key"))
            binary = micropython()
            lo, hi = args.lo, args.hi
            first = args.first_start
            if not attempt(binary, out, hi, first)[0]:
                print("no complete cycle even at %dK" % hi)
                return 1
            while hi - lo > 1:
                mid = (lo + hi) // 2
                ok, _ = attempt(binary, out, mid, first)
                print("heapsize=%dK: %s" % (mid, "ok" if ok else "fails"), flush=True)
                lo, hi = (lo, mid) if ok else (mid, hi)
            # Fragmentation makes success slightly non-monotonic: confirm a few times.
            while not all(attempt(binary, out, hi, first)[0] for _ in range(3)):
                hi += 1
            print("smallest heap for a full cycle (%s%s): %dK" % (
                ".mpy" if args.mpy else ".py", ", first start" if first else "", hi))
        finally:
            mq.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
