"""The device's cost of the storage audit (agent.storage_proof), on either runtime.

    python tests/portable/storage_cost.py DIR BLOCK BLOCKS K N
    micropython tests/portable/storage_cost.py DIR BLOCK BLOCKS K N   (agent .mpy on MICROPYPATH)

Stores a plot of BLOCKS blocks of BLOCK bytes through the binary store
command, then answers N challenges of K blocks; prints one line of
"key=value" pairs: the RAM the module takes once loaded (MicroPython only),
the time to store one block and to answer one challenge (average, µs), the
heap allocated while answering one (MicroPython: bytes the collector handed
out; CPython: tracemalloc peak), and the bytes one challenge wrote to the
state directory (file sizes and contents before and after).
"""

import gc
import hashlib
import os
import sys

MPY = sys.implementation.name == "micropython"
if MPY:
    import time

    def now_us():
        return time.ticks_us()

    def since(t0):
        return time.ticks_diff(time.ticks_us(), t0)
else:
    import time

    def now_us():
        return time.perf_counter_ns() // 1000

    def since(t0):
        return now_us() - t0


class _Cfg:
    def __init__(self, d):
        self.d = d

    def path(self, key):
        return self.d


class _Agent:
    def __init__(self, d):
        self.cfg = _Cfg(d)
        self.audit_out = []

    def log(self, msg):
        pass


def _digest(d):
    h = hashlib.sha256()
    total = 0
    for name in sorted(os.listdir(d)):
        h.update(name.encode())
        buf = bytearray(512)
        with open(d + "/" + name, "rb") as f:
            while True:
                got = f.readinto(buf)
                if not got:
                    break
                total += got
                h.update(buf[:got])
    return total, h.digest()


def main(d, block, blocks, k, n):
    try:
        os.mkdir(d)
    except OSError:
        pass
    from agent import fsutil  # noqa: F401  (loaded by any agent: not the module's cost)
    import binascii  # noqa: F401  (likewise)
    gc.collect()
    free0 = gc.mem_free() if MPY else 0
    from agent import storage_proof
    gc.collect()
    module = (free0 - gc.mem_free()) if MPY else 0
    a = _Agent(d)
    payload = bytearray(block)
    t0 = now_us()
    for i in range(blocks):
        payload[0:4] = i.to_bytes(4, "big")  # any bytes: the device stores what it is given
        storage_proof.handle(a, b"\x01" + (1).to_bytes(4, "big") + i.to_bytes(4, "big") + payload)
        a.audit_out = []
    store_us = since(t0) // blocks
    before = _digest(d)
    rng = b"bench"
    cmds = []
    for c in range(n):
        idx = b""
        for j in range(k):
            rng = hashlib.sha256(rng).digest()
            idx += (int.from_bytes(rng[:4], "big") % blocks).to_bytes(4, "big")
        cmds.append(b"\x02" + (1).to_bytes(4, "big") + (30000).to_bytes(4, "big") + rng[:16] + idx)
    # Timed first, then the heap measured on a second pass (tracemalloc slows CPython).
    total_us = 0
    for cmd in cmds:
        gc.collect()
        t0 = now_us()
        storage_proof.handle(a, cmd)
        total_us += since(t0)
        assert a.audit_out and b'"proof"' in a.audit_out[0], a.audit_out
        a.audit_out = []
    heap = 0
    if not MPY:
        import tracemalloc
    for cmd in cmds:
        gc.collect()
        if MPY:
            f0 = gc.mem_free()
        else:
            tracemalloc.start()
        storage_proof.handle(a, cmd)
        if MPY:
            heap = max(heap, f0 - gc.mem_free())
        else:
            heap = max(heap, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        a.audit_out = []
    after = _digest(d)
    written = 0 if after == before else abs(after[0] - before[0]) or after[0]
    print("module_ram=%d store_us=%d challenge_us=%d challenge_heap=%d challenge_written=%d plot_bytes=%d" % (
        module, store_us, total_us // n, heap, written, before[0]))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
