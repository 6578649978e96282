"""The Surge device agent: probes, report building, outbox, transport, main loop.

Modules here that run on the device stay inside MicroPython's subset; the
command line (``cli``) and other ``*_host`` helpers are CPython only.
"""

VERSION = "0.1.0"


def log(msg):
    # The device's log line (firmware_shim/host/flash.py parses the prefix).
    # It lives in the package, which stays loaded anyway: a function keeps its
    # whole module alive, and the start-up modules are unloaded after start.
    print("surge-agent: " + msg)
