"""Storage proof, device side (portable; docs/protocol.md §10).

The gateway streams the device a plot, one block per binary ``store``
command on ``cmd``, and later sends ``challenge`` commands naming k block
indices and a nonce; the device answers SHA-256(nonce || block_i1 || ... ||
block_ik) on its ``audit`` topic.  Blocks come from a seed only the gateway
knows, so the answer needs the blocks themselves.

    store:     01 || u32be(plot) || u32be(index) || block
    challenge: 02 || u32be(plot) || u32be(ms) || nonce(16) || u32be(index) * k

On flash, in the state directory: ``plot.bin`` (the blocks, appended in
index order, never held in RAM as a whole) and ``plot.id`` ("<plot>
<block size>").  Appending only: the gateway sends blocks in order and
re-sends one whose acknowledgement it missed, which is acknowledged again
without a write.  A power cut in the middle of an append leaves a partial
block; the plot is then dropped, the next challenge fails, and the gateway
starts a new plot (the window counts as failed: the price of losing data).

One function, few names and strings, on purpose: agent.runner loads this
module for each command and, from .mpy, unloads it again, and on a 48 KB
board it must load into the few KB, in pieces, that an idle agent leaves
free (each function and each new string is an allocation of its own).
Binary commands rather than JSON with hex for the same reason.
"""

import hashlib
import os

from agent import fsutil

# The most this device agrees to hold (it is a slice of flash on a board):
# the gateway asks for no more than its own limit and the free storage the
# device reports, whichever is less.
MAX_BYTES = 1 << 28


def handle(agent, msg):
    """Apply one binary storage command; replies wait in ``agent.audit_out``
    for the run loop (agent.session.send_audit), since a QoS 1 publish from
    inside the MQTT callback would wait for its PUBACK in the client's own
    receive path.  A malformed command is ignored."""
    d = agent.cfg.path("state_dir")
    meta = fsutil.join(d, "plot.id")
    data = fsutil.join(d, "plot.bin")
    n = len(msg)
    plot = int.from_bytes(msg[1:5], "big")
    cur = size = have = -1
    try:
        cur, size = fsutil.read(meta).split()
        cur, size = int(cur), int(size)
        have = os.stat(data)[6]
        if have % size:
            raise ValueError  # a torn append: drop the plot (see the top)
        have //= size
    except Exception:
        cur = -1
    q = getattr(agent, "audit_out", None)
    if q is None:
        q = agent.audit_out = []
    if msg[0] == 1 and 73 <= n <= 4105:  # 9 bytes of head, blocks of 64..4096 bytes
        index = int.from_bytes(msg[5:9], "big")
        if cur != plot or size != n - 9:
            if index:
                return  # a plot not started here: wait for its block 0
            for p in (data, meta):
                try:
                    os.remove(p)
                except OSError:
                    pass
            # The old blocks go before the new id is written, so a cut in
            # between never pairs the new plot with old blocks.
            fsutil.atomic_write(meta, b"%d %d" % (plot, n - 9))
            have = 0
            agent.log("storing plot %d (%d-byte blocks)" % (plot, n - 9))
        if index > have or (index + 1) * (n - 9) > MAX_BYTES:
            return
        if index == have:
            with open(data, "ab") as f:
                f.write(memoryview(msg)[9:])
        if len(q) < 32:  # bounded: the gateway sends again what it was not told
            q.append(b'{"t":"stored","plot":%d,"index":%d}' % (plot, index))
        return
    if msg[0] != 2 or n < 29 or (n - 25) % 4 or n > 281:  # k = 1..64
        agent.log("ignored storage command: %d bytes" % n)
        return
    import binascii
    nonce = bytes(msg[9:25])
    err = None
    if cur != plot:
        err = b"no_plot"
    h = hashlib.sha256(nonce)
    buf = bytearray(max(size, 0))
    if not err:
        with open(data, "rb") as f:
            for j in range(25, n, 4):
                i = int.from_bytes(msg[j:j + 4], "big")
                if i >= have:
                    err = b"missing"
                    break
                f.seek(i * size)
                f.readinto(buf)
                h.update(buf)
    tail = b'"error":"%s"' % err if err else b'"proof":"%s"' % binascii.hexlify(h.digest())
    if len(q) < 32:
        q.append(b'{"t":"answer","plot":%d,"nonce":"%s",%s}' % (plot, binascii.hexlify(nonce), tail))
    agent.log("challenge on plot %d answered%s" % (plot, " (%s)" % err.decode() if err else ""))
