"""The Surge device agent: probes, report building, outbox, transport, main loop.

Modules here that run on the device stay inside MicroPython's subset; the
command line (``cli``) and other ``*_host`` helpers are CPython only.
"""

VERSION = "0.1.0"
