"""The agent's persistent counters (portable): boot counter, last sequence
number, hash of the last report, dropped count, interval set by command.

One small JSON file, rewritten atomically after every change that matters.
"""

import json
import binascii

from agent import fsutil


class State:
    def __init__(self, path):
        self.path = path
        self.boot = 0
        self.seq = 0
        self.prev = None
        self.dropped = 0
        self.interval = None

    def load(self):
        """Read the file if there is one; a missing file is a first start."""
        try:
            doc = json.loads(fsutil.read(self.path))
        except OSError:
            return False
        self.boot = int(doc.get("boot", 0))
        self.seq = int(doc.get("seq", 0))
        prev = doc.get("prev")
        self.prev = binascii.unhexlify(prev) if prev else None
        self.dropped = int(doc.get("dropped", 0))
        self.interval = doc.get("interval")
        return True

    def save(self):
        doc = {"boot": self.boot, "seq": self.seq, "dropped": self.dropped,
               "prev": binascii.hexlify(self.prev).decode() if self.prev else None}
        if self.interval is not None:
            doc["interval"] = self.interval
        fsutil.atomic_write(self.path, json.dumps(doc).encode())
