"""Durable, bounded store-and-forward queue of signed reports (portable).

On-disk format, the same on both runtimes: one directory, one file per
report named by its zero-padded sequence number (``0000000000000042.rep``)
holding the exact COSE bytes.  Files are written with fsutil.atomic_write,
so a leftover ``*.tmp`` is an unfinished write and is removed on open.  Zero
padding makes name order equal sequence order, and a file is removed only
after the broker acknowledged it.
"""

import os

from agent import fsutil

class Outbox:
    def __init__(self, directory, max_entries):
        self.dir = directory
        self.max = max_entries
        fsutil.makedirs(directory)
        seqs = []
        for name in os.listdir(directory):
            if name.endswith(".tmp"):
                os.remove(fsutil.join(directory, name))
            elif name.endswith(".rep") and len(name) == 20:
                try:
                    seqs.append(int(name[:16]))
                except ValueError:
                    pass
        seqs.sort()
        self.seqs = seqs

    def __len__(self):
        return len(self.seqs)

    def _path(self, seq):
        return fsutil.join(self.dir, "%016d.rep" % seq)

    def put(self, seq, data):
        """Store one report; returns how many old reports were dropped for room."""
        dropped = 0
        while len(self.seqs) >= self.max:
            self.remove(self.seqs[0])
            dropped += 1
        fsutil.atomic_write(self._path(seq), data)
        self.seqs.append(seq)
        return dropped

    def oldest(self):
        """(seq, bytes) of the oldest report, or None when empty."""
        if not self.seqs:
            return None
        seq = self.seqs[0]
        return seq, fsutil.read(self._path(seq))

    def newest(self):
        if not self.seqs:
            return None
        seq = self.seqs[-1]
        return seq, fsutil.read(self._path(seq))

    def remove(self, seq):
        try:
            os.remove(self._path(seq))
        except OSError:
            pass  # already gone: removing is idempotent
        if seq in self.seqs:
            self.seqs.remove(seq)
