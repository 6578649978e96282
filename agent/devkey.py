"""The device key on the device itself (portable).

Same JSON format as agent.keyfile (host side): {"type": "surge-ed25519",
"secret": hex, "public": hex, "device_id": hex}.  ``create`` generates the
key where it will live, so the secret never crosses a wire; on CPython the
file is created with mode 0600 (MicroPython filesystems have no modes).
"""

import os
import json
import binascii

from agent import report

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

# const() (MicroPython 1.19 and later): no global name, so no interned string
# left behind when agent.device unloads this module after start-up.
_KEY_TYPE = const("surge-ed25519")


class KeyError_(ValueError):
    pass


def load(path):
    """(secret, public) from a key file; raises OSError when it is missing."""
    f = open(path)
    try:
        doc = json.loads(f.read())
    finally:
        f.close()
    try:
        if doc.get("type") != _KEY_TYPE:
            raise ValueError("type")
        secret = binascii.unhexlify(doc["secret"])
        public = binascii.unhexlify(doc["public"])
    except Exception:
        raise KeyError_("%s is not a Surge key file" % path)
    if len(secret) != 32 or len(public) != 32:
        raise KeyError_("%s is corrupt" % path)
    return secret, public


def create(path):
    from firmware_shim import ed25519
    secret = os.urandom(32)
    public = ed25519.public_key(secret)
    body = json.dumps({"type": _KEY_TYPE, "secret": binascii.hexlify(secret).decode(),
                       "public": binascii.hexlify(public).decode(),
                       "device_id": report.device_id(public)}).encode() + b"\n"
    if hasattr(os, "O_EXCL"):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        f = os.fdopen(fd, "wb")
    else:
        f = open(path, "wb")
    try:
        f.write(body)
        f.flush()
        if hasattr(os, "fsync"):
            os.fsync(f.fileno())
    finally:
        f.close()
    return secret, public
