"""Giving RAM back on a small heap (portable; a no-op where it does not matter).

A module imported once for start-up (config rules, key creation) would stay
in RAM for the agent's whole life; ``unload`` removes it from sys.modules and
from its package so the collector can reclaim it.
"""

import gc
import sys

SMALL = sys.implementation.name == "micropython"


def unload(*names):
    if not SMALL:
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
    gc.collect()
