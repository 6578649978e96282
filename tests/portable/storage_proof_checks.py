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

from agent import commands, fsutil, session
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
        self.audit_out = []

    def topic(self, kind):
        return "surge/v1/t/0011223344556677/" + kind

    def log(self, msg):
        self.lines.append(msg)


def _held(d):
    """(plot, block size, blocks) on "flash", read from the files themselves."""
    try:
        p = fsutil.read(fsutil.join(d, "plot.id")).split()
        n = os.stat(fsutil.join(d, "plot.bin"))[6]
    except OSError:
        return -1, 0, 0
    return int(p[0]), int(p[1]), n // int(p[1])


def _st(a, plot, index, block):
    """Send a store command; True when the device acknowledged that block."""
    session.storage_command(a, _store(plot, index, block))
    out, a.audit_out = a.audit_out, []
    assert len(out) <= 1
    return out == [b'{"t":"stored","plot":%d,"index":%d}' % (plot, index)]


def _ans(a, plot, nonce, idx):
    """Send a challenge; (proof, None) or (None, error) from the device's answer."""
    session.storage_command(a, _challenge(plot, nonce, idx))
    out, a.audit_out = a.audit_out, []
    assert len(out) == 1, out
    doc = json.loads(out[0])
    assert doc["t"] == "answer" and doc["plot"] == plot and doc["nonce"] == _hex(nonce), doc
    return (_unhex(doc["proof"]), None) if "proof" in doc else (None, doc["error"])


def check_vectors(vectors, tmp):
    n = 0
    doc = json.loads(fsutil.read(fsutil.join(vectors, "storage_audit.json")).decode())
    seed = _unhex(doc["seed"])
    for case in doc["cases"]:
        a = _Agent(fsutil.join(tmp, "v%d" % case["plot"]))
        fsutil.makedirs(a.cfg.d)
        size = case["block_size"]
        for i in range(case["blocks"]):
            b = _block(seed, case["plot"], i, size)
            assert _hex(hashlib.sha256(b).digest()) == case["block_sha256"][i]
            if i == 0:
                assert _hex(b[:64]) == case["block0_head"]
            assert _st(a, case["plot"], i, b)
            n += 1
        assert _held(a.cfg.d) == (case["plot"], size, case["blocks"])
        proof, err = _ans(a, case["plot"], _unhex(case["nonce"]), case["idx"])
        assert err is None and _hex(proof) == case["proof"], (err, proof)
        n += 2
    # The binary commands of the vectors, as the device reads them.
    a = _Agent(fsutil.join(tmp, "vc"))
    fsutil.makedirs(a.cfg.d)
    session.storage_command(a, _unhex(doc["store_command"]))
    assert a.audit_out == [b'{"t":"stored","plot":7,"index":0}'] and _held(a.cfg.d) == (7, 64, 1)
    assert _unhex(doc["store_command"])[9:] == _block(seed, 7, 0, 64)
    a.audit_out = []
    session.storage_command(a, _unhex(doc["challenge_command"]))
    assert json.loads(a.audit_out[0])["error"] == "missing"  # plot 7 here holds only block 0
    return n + 3


def check_store_rules(tmp):
    n = 0
    d = fsutil.join(tmp, "rules")
    fsutil.makedirs(d)
    a = _Agent(d)
    seed = b"\x01" * 32
    data = fsutil.join(d, "plot.bin")
    assert _held(d) == (-1, 0, 0) and _ans(a, 3, b"n" * 16, [0]) == (None, "no_plot")
    # Blocks of a plot the device has not started (no block 0 yet) are refused.
    assert not _st(a, 3, 1, _block(seed, 3, 1, 64))
    assert _st(a, 3, 0, _block(seed, 3, 0, 64)) and _st(a, 3, 1, _block(seed, 3, 1, 64))
    # A resend of a block held: acknowledged, not written twice; a hole: refused.
    assert _st(a, 3, 1, _block(seed, 3, 1, 64)) and _held(d) == (3, 64, 2)
    assert not _st(a, 3, 5, _block(seed, 3, 5, 64)) and _held(d) == (3, 64, 2)
    # Another block size for the same plot is another plot: refused past block 0.
    assert not _st(a, 3, 2, _block(seed, 3, 2, 128)) and _held(d) == (3, 64, 2)
    n += 6
    # An index not held answers "missing", never a proof.
    assert _ans(a, 3, b"n" * 16, [0, 2]) == (None, "missing")
    proof, err = _ans(a, 3, b"n" * 16, [1, 0])
    want = hashlib.sha256(b"n" * 16 + _block(seed, 3, 1, 64) + _block(seed, 3, 0, 64)).digest()
    assert err is None and proof == want
    n += 2
    # The data file gone while the plot id stays: "no_plot", not an error.
    os.rename(data, data + ".away")
    assert _ans(a, 3, b"n" * 16, [0]) == (None, "no_plot")
    os.rename(data + ".away", data)
    n += 1
    # A torn append (power cut mid-write): the plot no longer counts, and only
    # a block 0 starts one again.
    with open(data, "ab") as f:
        f.write(b"xx")
    assert _ans(a, 3, b"n" * 16, [0]) == (None, "no_plot") and not _st(a, 3, 2, _block(seed, 3, 2, 64))
    assert _st(a, 3, 0, _block(seed, 3, 0, 64)) and _held(d) == (3, 64, 1)
    n += 2
    # Block 0 of a new plot replaces the old one.
    assert _st(a, 4, 0, _block(seed, 4, 0, 64)) and _held(d) == (4, 64, 1)
    n += 1
    # The device's own cap.
    assert not _st(a, 4, sp.MAX_BYTES // 64, _block(seed, 4, 0, 64))
    n += 1
    return n


def _u32(x):
    return x.to_bytes(4, "big")


def _store(plot, index, block):
    return b"\x01" + _u32(plot) + _u32(index) + bytes(block)


def _challenge(plot, nonce, idx, ms=10000):
    out = b"\x02" + _u32(plot) + _u32(ms) + nonce
    for i in idx:
        out += _u32(i)
    return out


def check_commands(tmp):
    n = 0
    d = fsutil.join(tmp, "cmds")
    fsutil.makedirs(d)
    seed = b"\x02" * 32
    a = _Agent(d)
    for i in range(3):
        session.storage_command(a, _store(9, i, _block(seed, 9, i, 64)))
    assert a.link.sent == [] and len(a.audit_out) == 3  # replies wait for the run loop
    assert session.send_audit(a) and a.audit_out == []
    assert [json.loads(m[1])["index"] for m in a.link.sent] == [0, 1, 2]
    assert all(m[0].endswith("/audit") and m[2] == 1 for m in a.link.sent)
    assert json.loads(a.link.sent[0][1]) == {"t": "stored", "plot": 9, "index": 0}
    n += 4
    a.link.sent = []
    session.storage_command(a, _challenge(9, b"\xab" * 16, [2, 2, 0]))
    session.send_audit(a)
    ans = json.loads(a.link.sent[0][1])
    want = hashlib.sha256(b"\xab" * 16 + _block(seed, 9, 2, 64) + _block(seed, 9, 2, 64) + _block(seed, 9, 0, 64)).digest()
    assert ans == {"t": "answer", "plot": 9, "nonce": "ab" * 16, "proof": _hex(want)}, ans
    n += 1
    a.link.sent = []
    session.storage_command(a, _challenge(8, b"\xab" * 16, [0]))
    session.send_audit(a)
    assert json.loads(a.link.sent[0][1])["error"] == "no_plot"
    n += 1
    # Malformed commands: nothing published, nothing stored, the agent goes on.
    a.link.sent = []
    for bad in (b"\x01", _store(9, 3, b"\0" * 8), _store(9, 3, b"\0" * 4097), b"\x03" + b"\0" * 40,
                _challenge(9, b"\xab" * 16, []), _challenge(9, b"\xab" * 16, [0])[:-1],
                _challenge(9, b"\xab" * 16, list(range(65))), b"\x02" + b"\0" * 20):
        session.storage_command(a, bad)
        n += 1
    assert a.link.sent == [] and a.audit_out == [] and _held(d)[2] == 3
    # JSON commands still go their own way.
    commands.handle(a, b'{"cmd":"store","plot":9,"index":3,"data":"00"}')
    assert a.audit_out == [] and a.lines[-1] == "ignored command 'store'"
    return n + 2


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
