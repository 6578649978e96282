"""Sign and verify time of the portable core for the reference report.

Runs unchanged on both runtimes:
    python tests/portable/sign_timing.py            (repo root as cwd)
    MICROPYPATH=. micropython tests/portable/sign_timing.py
"""

import json
import sys
import time

sys.path.insert(0, ".")

from firmware_shim import cose, ed25519  # noqa: E402


def now_ms():
    if hasattr(time, "ticks_ms"):
        return time.ticks_ms()
    return time.perf_counter() * 1000.0


with open("tests/vectors/cose_sign1.json") as f:
    ref = json.load(f)["reference_report"]
secret = bytes.fromhex(ref["secret"])
public = bytes.fromhex(ref["public"])
report = bytes.fromhex(ref["cbor"])
tbs = cose.parse_sign1(report).to_be_signed()
n = 50
t0 = now_ms()
for _ in range(n):
    ed25519.sign(secret, tbs, public)
t1 = now_ms()
for _ in range(n):
    assert cose.verify_sign1(report, public)
t2 = now_ms()
print("%s: report %d bytes, sign %.1f ms, verify %.1f ms (mean of %d)"
      % (sys.implementation.name, len(report), (t1 - t0) / n, (t2 - t1) / n, n))
