"""Device key files (host side): create with mode 0600, load, refuse loose permissions.

Format (JSON, also read by the agent on MicroPython):
{"type": "surge-ed25519", "secret": "<64 hex>", "public": "<64 hex>", "device_id": "<16 hex>"}
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass

from surge_protocol import claims as C
from firmware_shim import ed25519

KEY_TYPE = "surge-ed25519"


class KeyFileError(Exception):
    """A key file that cannot be created or used; the message says what to do."""


@dataclass(frozen=True)
class DeviceKey:
    secret: bytes
    public: bytes

    @property
    def device_id(self) -> str:
        return C.device_id(self.public)

    def __repr__(self) -> str:  # never show the secret
        return "DeviceKey(device_id=%s)" % self.device_id


def generate() -> DeviceKey:
    secret = os.urandom(32)
    return DeviceKey(secret, _public(secret))


def _public(secret: bytes) -> bytes:
    try:
        from nacl.signing import SigningKey
    except ImportError:  # the portable core gives the same key, only slower
        return bytes(ed25519.public_key(secret))
    return bytes(SigningKey(secret).verify_key)


def write(path: str, key: DeviceKey) -> None:
    """Create ``path`` with mode 0600; never overwrite an existing key."""
    body = (
        json.dumps(
            {"type": KEY_TYPE, "secret": key.secret.hex(), "public": key.public.hex(), "device_id": key.device_id}
        )
        + "\n"
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(
            "%s already exists; refusing to overwrite a key "
            "(move it away first if you really mean to replace it)" % path
        ) from None
    except OSError as exc:
        raise KeyFileError("cannot create %s: %s" % (path, exc.strerror)) from None
    with os.fdopen(fd, "w") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())


def load(path: str, check_mode: bool = True) -> DeviceKey:
    """Read a key file; refuses one that group or others can read."""
    try:
        st = os.stat(path)
        with open(path) as f:
            raw = f.read()
    except OSError as exc:
        raise KeyFileError("cannot read key file %s: %s" % (path, exc.strerror)) from None
    if check_mode and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            "key file %s is accessible by group or others (mode %o); "
            "run: chmod 600 %s" % (path, stat.S_IMODE(st.st_mode), path)
        )
    try:
        doc = json.loads(raw)
        if doc.get("type") != KEY_TYPE:
            raise ValueError("type is not %r" % KEY_TYPE)
        secret = bytes.fromhex(doc["secret"])
        public = bytes.fromhex(doc["public"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyFileError("%s is not a Surge key file (%s)" % (path, exc)) from None
    if len(secret) != 32 or _public(secret) != public:
        raise KeyFileError("%s is corrupt: public key does not match the secret" % path)
    return DeviceKey(secret, public)


def load_public(path: str) -> bytes:
    """Only the public key of a key file (no permission check: it is public)."""
    try:
        with open(path) as f:
            doc = json.load(f)
        public = bytes.fromhex(doc["public"])
    except OSError as exc:
        raise KeyFileError("cannot read key file %s: %s" % (path, exc.strerror)) from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyFileError("%s is not a Surge key file (%s)" % (path, exc)) from None
    if len(public) != 32:
        raise KeyFileError("%s: public key must be 32 bytes" % path)
    return public
