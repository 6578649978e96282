"""Device identity and report chaining (docs/protocol.md), one definition.

Portable: CPython and MicroPython (this module ships to boards).  The key id
is in every report's COSE header and the device id names its topics and its
enrollment row; PREV links each report to the one before.  Changing a length
here makes every enrolled device unknown and every chain broken.
"""

import hashlib

DEVICE_ID_BYTES = 8
PREV_BYTES = 16


def kid(public):
    """COSE key id: the first 8 bytes of SHA-256 of the Ed25519 public key."""
    return hashlib.sha256(bytes(public)).digest()[:DEVICE_ID_BYTES]


def device_id(public):
    """Text form of the key id (lower-case hex), used in topics and client ids."""
    # "%02x" per byte rather than binascii/bytes.hex: both are optional on ports.
    return "".join("%02x" % b for b in kid(public))


def prev_hash(report):
    """PREV claim for the report that follows ``report`` (its COSE bytes)."""
    return hashlib.sha256(bytes(report)).digest()[:PREV_BYTES]
