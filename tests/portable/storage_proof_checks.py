"""The device side of the storage audit (agent.storage_proof) on CPython and
the MicroPython unix port alike: blocks stored as the gateway sends them,
answers that match tests/vectors/storage_audit.json, and the bad commands a
device must shrug off.  ``main(vectors_dir, tmpdir)`` prints "PASS <n>"; run
as ``micropython tests/portable/storage_proof_checks.py VECTORS DIR``.
"""

import hashlib
import json
import os
import sys

from agent import commands, fsutil
from agent import storage_proof as sp


def _block(seed, plot, index, size):
    # The vectors' construction, restated here so the check does not lean
    # on the gateway's code (which is not on a board anyway).
    out = bytearray(size)  # one allocation: a 48K heap has no room for growing it
    head = seed + plot.to_bytes(4, "big") + index.to_bytes(4, "big")
    for j in range(0, size, 32):
        d = hashlib.sha256(head + (j // 32).to_bytes(4, "big")).digest()
        out[j:j + 32] = d[:size - j]
    return out


def _hex(b):
    import binascii
    return binascii.hexlify(b).decode()


def _unhex(s):
    import binascii
    return binascii.unhexlify(s)


class _Link:
    def __init__(self):
        self.sent = []

    def publish(self, topic, data, qos=1, retain=False):
        self.sent.append((topic, bytes(data), qos))


class _Cfg:
    def __init__(self, d):
        self.d = d

    def path(self, key):
        return self.d


class _Agent:
    """What storage_proof and commands use of agent.runner.Agent."""

    def __init__(self, d):
        self.cfg = _Cfg(d)
        self.link = _Link()
        self.lines = []
        self.plot_file = None

    def topic(self, kind):
        return "surge/v1/t/0011223344556677/" + kind

    def log(self, msg):
        self.lines.append(msg)


def check_vectors(vectors, tmp):
    n = 0
    doc = json.loads(fsutil.read(fsutil.join(vectors, "storage_audit.json")).decode())
    seed = _unhex(doc["seed"])
    for case in doc["cases"]:
        d = fsutil.join(tmp, "v%d" % case["plot"])
        fsutil.makedirs(d)
        pf = sp.PlotFile(d)
        size = case["block_size"]
        for i in range(case["blocks"]):
            b = _block(seed, case["plot"], i, size)
            assert _hex(hashlib.sha256(b).digest()) == case["block_sha256"][i]
            if i == 0:
                assert _hex(b[:64]) == case["block0_head"]
            assert pf.store(case["plot"], i, b)
            n += 1
        # A fresh PlotFile reads back what is on flash.
        pf = sp.PlotFile(d)
        assert pf.plot == case["plot"] and pf.size == size and pf.count() == case["blocks"]
        nonce = _unhex(case["nonce"])
        proof, err = pf.answer(case["plot"], nonce, case["idx"])
        assert err is None and _hex(proof) == case["proof"], (err, proof)
        n += 2
    return n


def check_store_rules(tmp):
    n = 0
    d = fsutil.join(tmp, "rules")
    fsutil.makedirs(d)
    seed = b"\x01" * 32
    pf = sp.PlotFile(d)
    assert pf.count() == 0 and pf.answer(3, b"n" * 16, [0]) == (None, "no_plot")
    # Blocks of a plot the device has not started (no block 0 yet) are refused.
    assert not pf.store(3, 1, _block(seed, 3, 1, 64))
    assert pf.store(3, 0, _block(seed, 3, 0, 64)) and pf.store(3, 1, _block(seed, 3, 1, 64))
    # A resend of a block held: acknowledged, not written twice; a hole: refused.
    assert pf.store(3, 1, _block(seed, 3, 1, 64)) and pf.count() == 2
    assert not pf.store(3, 5, _block(seed, 3, 5, 64)) and pf.count() == 2
    # Another block size for the same plot is another plot: refused past block 0.
    assert not pf.store(3, 2, _block(seed, 3, 2, 128))
    n += 6
    # An index not held answers "missing", never a proof.
    assert pf.answer(3, b"n" * 16, [0, 2]) == (None, "missing")
    proof, err = pf.answer(3, b"n" * 16, [1, 0])
    want = hashlib.sha256(b"n" * 16 + _block(seed, 3, 1, 64) + _block(seed, 3, 0, 64)).digest()
    assert err is None and proof == want
    n += 2
    # A torn append (power cut mid-write) drops the plot.
    with open(pf.data, "ab") as f:
        f.write(b"xx")
    assert pf.count() == 0 and pf.plot == -1 and not fsutil.exists(pf.meta)
    n += 1
    # Block 0 of a new plot replaces the old one.
    assert pf.store(3, 0, _block(seed, 3, 0, 64)) and pf.store(4, 0, _block(seed, 4, 0, 64))
    assert pf.plot == 4 and pf.count() == 1 and sp.PlotFile(d).plot == 4
    n += 2
    # The device's own cap.
    big = sp.MAX_BYTES // 64
    assert not pf.store(4, big, _block(seed, 4, 0, 64)) or big <= 1
    n += 1
    return n


def check_commands(tmp):
    n = 0
    d = fsutil.join(tmp, "cmds")
    fsutil.makedirs(d)
    seed = b"\x02" * 32
    a = _Agent(d)
    for i in range(3):
        msg = json.dumps({"cmd": "store", "plot": 9, "index": i, "size": 64, "data": _hex(_block(seed, 9, i, 64))})
        commands.handle(a, msg.encode())
    assert [json.loads(m[1])["index"] for m in a.link.sent] == [0, 1, 2]
    assert all(m[0].endswith("/audit") and m[2] == 1 for m in a.link.sent)
    assert json.loads(a.link.sent[0][1]) == {"t": "stored", "plot": 9, "index": 0}
    n += 3
    a.link.sent = []
    commands.handle(a, json.dumps({"cmd": "challenge", "plot": 9, "nonce": "ab" * 16, "idx": [2, 2, 0],
                                   "ms": 10000}).encode())
    ans = json.loads(a.link.sent[0][1])
    want = hashlib.sha256(b"\xab" * 16 + _block(seed, 9, 2, 64) + _block(seed, 9, 2, 64) + _block(seed, 9, 0, 64)).digest()
    assert ans == {"t": "answer", "plot": 9, "nonce": "ab" * 16, "proof": _hex(want)}, ans
    n += 1
    a.link.sent = []
    commands.handle(a, json.dumps({"cmd": "challenge", "plot": 8, "nonce": "ab" * 16, "idx": [0]}).encode())
    assert json.loads(a.link.sent[0][1])["error"] == "no_plot"
    n += 1
    # Malformed commands: nothing published, nothing stored, the agent goes on.
    a.link.sent = []
    for bad in ({"cmd": "store", "plot": -1, "index": 3, "data": "00" * 64},
                {"cmd": "store", "plot": 9, "index": "3", "data": "00" * 64},
                {"cmd": "store", "plot": 9, "index": 3, "data": "00" * 8},
                {"cmd": "store", "plot": 9, "index": 3, "data": "zz" * 64},
                {"cmd": "store", "plot": 9, "index": 3, "data": "00" * 4097},
                {"cmd": "challenge", "plot": 9, "nonce": "ab", "idx": [0]},
                {"cmd": "challenge", "plot": 9, "nonce": "ab" * 16, "idx": []},
                {"cmd": "challenge", "plot": 9, "nonce": "ab" * 16, "idx": [True]},
                {"cmd": "challenge", "plot": 9, "nonce": "ab" * 16, "idx": list(range(65))},
                {"cmd": "challenge", "plot": 9, "nonce": "zz" * 16, "idx": [0]}):
        commands.handle(a, json.dumps(bad).encode())
        n += 1
    assert a.link.sent == [] and sp.PlotFile(d).count() == 3
    return n + 1


def _rmtree(path):
    for name in os.listdir(path):
        p = fsutil.join(path, name)
        try:
            os.remove(p)
        except OSError:
            _rmtree(p)
    os.rmdir(path)


def main(vectors, tmp):
    fsutil.makedirs(tmp)
    total = 0
    for name, fn in (("vectors", lambda: check_vectors(vectors, tmp)), ("store", lambda: check_store_rules(tmp)),
                     ("commands", lambda: check_commands(tmp))):
        n = fn()
        print("%s: %d checks" % (name, n))
        total += n
    _rmtree(tmp)
    print("PASS %d" % total)
    return total


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
