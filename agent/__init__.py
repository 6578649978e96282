"""The Surge device agent: probes, report building, outbox, transport, main loop.

Modules here that run on the device stay inside MicroPython's subset; the
command line (``cli``) and other ``*_host`` helpers are CPython only.

The few helpers below live in the package because it stays loaded anyway:
a function keeps its whole module alive, and on a board modules needed for
one job (start-up, one measurement) are unloaded once it is done.
"""

import sys

VERSION = "0.1.0"


def log(msg):
    # The device's log line (firmware_shim/host/flash.py parses the prefix).
    print("surge-agent: " + msg)


def reason(exc):
    """A short, stable reason: errno name for OSError, else the exception type
    (at most 40 characters)."""
    code = exc.args[0] if exc.args else None
    if isinstance(exc, OSError) and isinstance(code, int):
        try:
            import errno
            return errno.errorcode.get(code, "errno %d" % code)
        except ImportError:
            return "errno %d" % code
    return ("%s: %s" % (type(exc).__name__, exc))[:40]


def unload(*names):
    """Forget modules (on MicroPython; a no-op elsewhere): out of sys.modules
    and their package, so the collector takes their code once nothing else
    refers to it.  Importing one again loads it afresh."""
    if sys.implementation.name != "micropython":
        return
    for name in names:
        sys.modules.pop(name, None)
        pkg, _, attr = name.rpartition(".")
        p = sys.modules.get(pkg)
        if p is not None and attr in getattr(p, "__dict__", {}):
            try:
                delattr(p, attr)
            except (AttributeError, TypeError):
                pass
    import gc
    gc.collect()
