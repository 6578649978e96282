"""Storage proof, device side (portable; docs/protocol.md §10).

The gateway streams the device a plot, one block per ``store`` command, and
later sends ``challenge`` commands naming k block indices and a nonce; the
device answers SHA-256(nonce || block_i1 || ... || block_ik) on its ``audit``
topic.  Blocks come from a seed only the gateway knows, so the answer needs
the blocks themselves: a device that did not keep them cannot answer.

On flash: ``plot.bin`` (the blocks, appended in index order, never held in
RAM as a whole) and ``plot.id`` ("<plot> <block size>") in the state
directory.  Appending only, because the gateway sends blocks in order and
re-sends one whose acknowledgement it missed: a block already held is
acknowledged again without a write.  A power cut in the middle of an append
leaves a partial block; the plot is then dropped, the gateway's next
challenge fails, and the gateway starts a new plot (it counts that window
as failed, which is the price of losing data).
"""

import hashlib
import os
import sys

from agent import fsutil

_MPY = sys.implementation.name == "micropython"
# The most this device agrees to hold: on a board a slice of its flash, on a
# Linux machine a slice of its disk; the gateway asks for no more than its
# own limit and the free storage the device reports, whichever is less.
MAX_BYTES = (256 if _MPY else 256 * 1024) * 1024
MIN_BLOCK = 64
MAX_BLOCK = 4096
MAX_K = 64


class PlotFile:
    """The plot held in ``dirpath``: which plot, its block size, blocks held."""

    def __init__(self, dirpath):
        self.data = fsutil.join(dirpath, "plot.bin")
        self.meta = fsutil.join(dirpath, "plot.id")
        self.plot = -1
        self.size = 0
        try:
            parts = fsutil.read(self.meta).decode().split()
            self.plot = int(parts[0])
            self.size = int(parts[1])
        except (OSError, ValueError, IndexError):
            pass

    def count(self):
        """Whole blocks held (0 without a plot)."""
        if self.size <= 0:
            return 0
        try:
            n = os.stat(self.data)[6]
        except OSError:
            return 0
        if n % self.size:
            self.reset()  # a torn append: see the module docstring
            return 0
        return n // self.size

    def reset(self):
        for p in (self.data, self.meta):
            try:
                os.remove(p)
            except OSError:
                pass
        self.plot = -1
        self.size = 0

    def store(self, plot, index, data):
        """Hold block ``index`` of ``plot``; True when it is held (written now or before)."""
        size = len(data)
        if plot != self.plot or size != self.size:
            if index != 0:
                return False  # blocks of an unknown plot: wait for its block 0
            self.reset()
            # The data file goes before the new name is written, so a cut in
            # between never pairs the new plot id with old blocks.
            fsutil.atomic_write(self.meta, ("%d %d" % (plot, size)).encode())
            self.plot = plot
            self.size = size
        n = self.count()
        if index < n:
            return True
        if index > n or (index + 1) * size > MAX_BYTES:
            return False
        with open(self.data, "ab") as f:
            f.write(data)
        return True

    def answer(self, plot, nonce, indices):
        """(proof, None), or (None, reason) when this plot or a block is not held."""
        if plot != self.plot:
            return None, "no_plot"
        n = self.count()
        h = hashlib.sha256(nonce)
        buf = bytearray(self.size)
        with open(self.data, "rb") as f:
            for i in indices:
                if not 0 <= i < n:
                    return None, "missing"
                f.seek(i * self.size)
                if f.readinto(buf) != self.size:
                    return None, "missing"
                h.update(buf)
        return h.digest(), None


def _uint(v):
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 4294967296


def handle(agent, name, doc):
    """Apply a ``store`` or ``challenge`` command (already JSON-decoded); bad
    members are ignored and logged, like any malformed command."""
    import binascii
    plot = doc.get("plot")
    if not _uint(plot):
        agent.log("ignored %s: bad plot" % name)
        return
    pf = agent.plot_file if getattr(agent, "plot_file", None) else PlotFile(agent.cfg.path("state_dir"))
    agent.plot_file = pf
    if name == "store":
        index = doc.get("index")
        data = doc.get("data")
        if not _uint(index) or not isinstance(data, str) or not MIN_BLOCK * 2 <= len(data) <= MAX_BLOCK * 2:
            agent.log("ignored store: bad index or data")
            return
        data = binascii.unhexlify(data)
        if index == 0 and plot != pf.plot:
            agent.log("storing plot %d (%d-byte blocks)" % (plot, len(data)))
        if pf.store(plot, index, data):
            data = None
            agent.link.publish(agent.topic("audit"),
                               ('{"t":"stored","plot":%d,"index":%d}' % (plot, index)).encode(), 1)
        return
    nonce = doc.get("nonce")
    idx = doc.get("idx")
    if (not isinstance(nonce, str) or len(nonce) != 32 or not isinstance(idx, list)
            or not 1 <= len(idx) <= MAX_K):
        agent.log("ignored challenge: bad nonce or idx")
        return
    for i in idx:
        if not _uint(i):
            agent.log("ignored challenge: bad idx")
            return
    proof, err = pf.answer(plot, binascii.unhexlify(nonce), idx)
    if err:
        msg = '{"t":"answer","plot":%d,"nonce":"%s","error":"%s"}' % (plot, nonce, err)
    else:
        msg = '{"t":"answer","plot":%d,"nonce":"%s","proof":"%s"}' % (
            plot, nonce, binascii.hexlify(proof).decode())
    agent.link.publish(agent.topic("audit"), msg.encode(), 1)
    agent.log("challenge on plot %d answered%s" % (plot, " (%s)" % err if err else ""))
