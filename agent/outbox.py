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
    """The queue is the range lo..hi of seqs, not a list of them: files are
    written in seq order and leave oldest first, so the range has no holes
    unless files were removed by hand (oldest() steps over those, and len()
    counts them). A list of hundreds of names and ints did not fit 48K."""

    def __init__(self, directory, max_entries):
        self.dir = directory
        self.max = max_entries
        self.lo, self.hi = 1, 0  # empty
        fsutil.makedirs(directory)
        torn = []
        # MicroPython's ilistdir yields one entry at a time; listdir holds them all.
        for name in os.ilistdir(directory) if hasattr(os, "ilistdir") else os.listdir(directory):
            name = name if isinstance(name, str) else name[0]
            if name.endswith(".tmp"):
                torn.append(name)
            elif name.endswith(".rep") and len(name) == 20:
                try:
                    seq = int(name[:16])
                except ValueError:
                    continue
                if not len(self):
                    self.lo = self.hi = seq
                self.lo, self.hi = min(self.lo, seq), max(self.hi, seq)
        for name in torn:  # unfinished writes; not removed while listing
            os.remove(fsutil.join(directory, name))

    def __len__(self):
        return self.hi - self.lo + 1

    def _path(self, seq):
        return fsutil.join(self.dir, "%016d.rep" % seq)

    def put(self, seq, data):
        """Store one report; returns how many old reports were dropped for room."""
        dropped = 0
        while len(self) >= self.max:
            self.remove(self.lo)
            dropped += 1
        fsutil.atomic_write(self._path(seq), data)
        if not len(self):
            self.lo = seq
        self.hi = seq  # seqs only grow: agent.runner resumes after the newest queued
        return dropped

    def oldest(self):
        """(seq, bytes) of the oldest report, or None when empty."""
        while len(self):
            path = self._path(self.lo)
            try:
                return self.lo, fsutil.read(path)
            except OSError:
                if fsutil.exists(path):
                    raise
                self.lo += 1  # a hole
        return None

    def newest(self):
        if not len(self):
            return None
        return self.hi, fsutil.read(self._path(self.hi))

    def remove(self, seq):
        try:
            os.remove(self._path(seq))
        except OSError:
            pass  # already gone: removing is idempotent
        if seq == self.lo and len(self):
            self.lo += 1
