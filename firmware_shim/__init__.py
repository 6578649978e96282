"""Portable code that lets the Surge agent run on MicroPython firmware.

Everything at this level is pure Python inside MicroPython's subset and has no
dependencies: SHA-512, Ed25519, deterministic CBOR, COSE_Sign1 and a minimal
MQTT client.  The ``host`` sub-package (bundle builder, serial flasher) runs on
CPython only and is never copied to a board.
"""
