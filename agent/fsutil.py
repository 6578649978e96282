"""Crash-safe file writes shared by the outbox and the state file (portable).

A file is written beside its final name as ``*.tmp``, flushed to the medium,
then renamed over the final name, so a power cut or kill -9 leaves either
the old file or the new one, never a torn one.  On the MicroPython unix port
and littlefs ``flush`` reaches the medium and ``rename`` replaces atomically;
FAT refuses to rename over an existing file, so there the old one is removed
first (a crash in that window leaves only the ``.tmp``, which ``load`` callers
treat as absent).
"""

import os

_fsync = getattr(os, "fsync", None)


def join(path, name):
    if not path or name.startswith("/"):
        return name
    return path.rstrip("/") + "/" + name


def dirname(path):
    i = path.rfind("/")
    if i < 0:
        return ""
    return path[:i] or "/"


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def makedirs(path):
    if not path or exists(path):
        return
    makedirs(dirname(path))
    try:
        os.mkdir(path)
    except OSError:
        if not exists(path):
            raise


def atomic_write(path, data):
    tmp = path + ".tmp"
    f = open(tmp, "wb")
    try:
        f.write(data)
        f.flush()
        if _fsync is not None:
            _fsync(f.fileno())
    finally:
        f.close()
    try:
        os.rename(tmp, path)
    except OSError:
        os.remove(path)
        os.rename(tmp, path)
    # CPython on POSIX: the rename itself must reach the disk too.
    if _fsync is None or not hasattr(os, "O_RDONLY"):
        return
    try:
        fd = os.open(dirname(path) or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        _fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read(path):
    f = open(path, "rb")
    try:
        return f.read()
    finally:
        f.close()
