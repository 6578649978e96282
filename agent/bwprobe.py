"""Active upload bandwidth probe (portable).

Sends ``total`` bytes of a nonce-seeded stream to the device's probe topic
and reports the achieved rate (docs/protocol.md §2.6).  Chunk i carries the
first bytes of SHA-256(nonce || u32be(i) || u32be(0)) || SHA-256(nonce ||
u32be(i) || u32be(1)) || ...  Each message is CBOR [nonce, seq, chunk_index,
chunk_count, payload], so a gateway can regenerate every byte from the
16-byte nonce (the payload cannot be compressed or replayed from an older
probe), time the arrivals itself and tie the probe to the report with the
same seq.  All chunks but the last go at QoS 0; the last at QoS 1, and its
PUBACK, which the broker sends only after reading everything before it on
the connection, ends the device's own timing.
"""

import os
import sys
import hashlib

from agent import cborw
from agent import clock

# Chunk size: a multiple of 32.  On MicroPython a chunk message and the
# packet around it are the largest blocks the agent allocates, and a
# fragmented 64 KB board heap often has no free run of 600 bytes.
CHUNK = 256 if sys.implementation.name == "micropython" else 512


def _stream(out, pos, nonce, index):
    # Writes the first bytes of chunk ``index``'s stream into ``out[pos:]``,
    # up to its end: the buffer is allocated once at its final size, since
    # growing it 32 bytes at a time leaves a trail of holes in a board heap.
    seed = nonce + index.to_bytes(4, "big")
    j = 0
    while pos < len(out):
        d = hashlib.sha256(seed + j.to_bytes(4, "big")).digest()
        n = min(32, len(out) - pos)
        out[pos:pos + n] = d if n == 32 else d[:n]
        pos += n
        j += 1


def stream_chunk(nonce, index, size=CHUNK):
    out = bytearray(size)
    _stream(out, 0, nonce, index)
    return bytes(out)


def message(nonce, seq, index, count, total, m=None):
    """CBOR [nonce, seq, index, count, data], with data streamed in place (into
    ``m`` when it is the right size: one buffer serves a whole run)."""
    size = min(CHUNK, total - index * CHUNK)
    h = bytearray()
    cborw.head(h, 4, 5)
    for x in (nonce, seq, index, count):
        cborw.encode_into(x, h)
    cborw.head(h, 2, size)
    if m is None or len(m) != len(h) + size:
        m = bytearray(len(h) + size)
    m[:len(h)] = h
    _stream(m, len(h), nonce, index)
    return m

def run(link, topic, seq, total):
    """Upload ``total`` payload bytes; returns bytes/s (message bytes on the wire)."""
    nonce = os.urandom(16)
    count = (total + CHUNK - 1) // CHUNK
    sent = 0
    m = None
    t0 = clock.ms()
    for i in range(count):
        # The same buffer again (a publish has written it out when it returns):
        # a board heap that had room for one chunk has it for the next.
        m = message(nonce, seq, i, count, total, m)
        sent += len(m)
        link.publish(topic, m, 1 if i == count - 1 else 0)
    elapsed = clock.ms() - t0
    return sent * 1000 // max(1, elapsed)
