"""Sign and verify one report with the portable core only, under a small heap.

Run as ``micropython -X heapsize=64K tests/portable/sign_at_heap.py``; prints
"OK <report bytes> <sign ms> <verify ms>".
"""

import gc
import time

from firmware_shim import cbor, cose, ed25519

gc.collect()
secret = bytes(range(32))
public = ed25519.public_key(secret)
# Claims of a typical report, keys as in docs/protocol.md.
claims = {6: 1795000000, 261: 259200, 267: 12,
          -65537: {1: 123456, 2: 31914983424, 3: 12345678901, 4: 1234567890, 5: 987654321,
                   6: 1250000, 7: 2500000, 8: -61, 10: 300, 11: b"\x00" * 16, 12: True, 13: 0}}
t0 = time.ticks_ms() if hasattr(time, "ticks_ms") else int(time.time() * 1000)
report = cose.sign1(cbor.dumps(claims), secret, b"\x01" * 8, public)
t1 = time.ticks_ms() if hasattr(time, "ticks_ms") else int(time.time() * 1000)
ok = cose.verify_sign1(report, public)
t2 = time.ticks_ms() if hasattr(time, "ticks_ms") else int(time.time() * 1000)
assert ok
assert not cose.verify_sign1(report[:-1] + bytes([report[-1] ^ 1]), public)
print("OK %d %d %d" % (len(report), t1 - t0, t2 - t1))
