"""The gateway's chain signing key, kept out of logs, errors and reprs.

Sources, in order of preference:

1. an encrypted Ethereum keystore (Web3 Secret Storage) file, decrypted with
   the password in ``SURGE_KEYSTORE_PASSWORD``;
2. the raw hex key in ``SURGE_CHAIN_KEY`` (containers, CI secrets).

Every failure is re-raised as :class:`ChainKeyError` ``from None``: the
underlying exception (from eth-account, hexbytes, json) may quote its input,
which would put the key or the password into a log line or traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import coincurve
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_hash.auto import keccak
from eth_typing import ChecksumAddress

from .errors import ChainKeyError

KEY_ENV = "SURGE_CHAIN_KEY"
PASSWORD_ENV = "SURGE_KEYSTORE_PASSWORD"


class ChainKey:
    """A signing key whose only public face is its address.

    ``repr``/``str`` show the address; pickling and copying are refused so the
    key cannot leak through a multiprocessing queue or a debug dump.
    """

    __slots__ = ("_account", "_secp")

    def __init__(self, account: LocalAccount) -> None:
        self._account = account
        # The same key for libsecp256k1 directly: sign_message runs once per
        # accepted report (gateway/attest.py), and eth-account's own path
        # costs ~142 us of Python around a ~25 us signature.
        self._secp = coincurve.PrivateKey(bytes(account.key))

    @classmethod
    def from_hex(cls, key_hex: str) -> ChainKey:
        try:
            account: LocalAccount = Account.from_key(key_hex.strip())
        except Exception:
            raise ChainKeyError("chain key is not a valid 32-byte secp256k1 private key") from None
        return cls(account)

    @classmethod
    def generate(cls) -> ChainKey:
        """A fresh random key (in-memory chains and tests)."""
        account: LocalAccount = Account.create()
        return cls(account)

    @property
    def address(self) -> ChecksumAddress:
        """Checksummed address."""
        return self._account.address

    def sign_transaction(self, tx: Mapping[str, Any]) -> bytes:
        """Sign ``tx`` and return the raw transaction bytes to broadcast."""
        try:
            signed = self._account.sign_transaction(dict(tx))
        except Exception as exc:
            # The tx dict holds no secret, but the exception text is not ours
            # to trust: report only its type.
            raise ChainKeyError(f"could not sign transaction: {type(exc).__name__}") from None
        return bytes(signed.raw_transaction)

    def sign_message(self, message: bytes) -> bytes:
        """EIP-191 personal_sign signature (65 bytes, r || s || v with v = 27 or 28) over ``message``.

        Byte for byte what eth-account's ``sign_message(encode_defunct(message))``
        gives (RFC 6979 nonces in libsecp256k1 either way; tests/test_chain_keys.py).
        """
        digest = keccak(b"\x19Ethereum Signed Message:\n%d" % len(message) + message)
        sig = self._secp.sign_recoverable(digest, hasher=None)
        return sig[:64] + bytes((sig[64] + 27,))

    def encrypt(self, password: str) -> dict[str, Any]:
        """Keystore JSON for this key (used by tooling and tests)."""
        return dict(Account.encrypt(self._account.key, password))

    def __repr__(self) -> str:
        return f"ChainKey(address={self.address})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("ChainKey cannot be pickled")

    def __copy__(self) -> NoReturn:
        raise TypeError("ChainKey cannot be copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError("ChainKey cannot be copied")


def keystore_password(environ: Mapping[str, str]) -> str | None:
    """``$SURGE_KEYSTORE_PASSWORD``, or the first line of ``$SURGE_KEYSTORE_PASSWORD_FILE``
    (systemd credentials keep the password out of the unit and the environment)."""
    password = environ.get(PASSWORD_ENV)
    path = environ.get(PASSWORD_ENV + "_FILE")
    if password is None and path:
        try:
            password = Path(path).read_text("utf-8").splitlines()[0]
        except (OSError, IndexError):
            raise ChainKeyError(f"{PASSWORD_ENV}_FILE: cannot read a password from it") from None
    return password


def load_keystore(path: str | Path, password: str | None = None) -> ChainKey:
    """Decrypt a keystore file; password defaults to ``$SURGE_KEYSTORE_PASSWORD``."""
    if password is None:
        password = keystore_password(os.environ)
    if password is None:
        raise ChainKeyError(f"keystore {Path(path).name}: {PASSWORD_ENV} is not set")
    try:
        keyfile = json.loads(Path(path).read_text("utf-8"))
    except OSError as exc:
        raise ChainKeyError(f"keystore {Path(path).name}: cannot read ({exc.strerror})") from None
    except ValueError:
        raise ChainKeyError(f"keystore {Path(path).name}: not JSON") from None
    try:
        key_bytes = Account.decrypt(keyfile, password)
    except Exception:
        raise ChainKeyError(f"keystore {Path(path).name}: wrong password or corrupt keystore") from None
    return ChainKey(Account.from_key(key_bytes))


def load_chain_key(keystore: str | Path | None = None, env: Mapping[str, str] | None = None) -> ChainKey:
    """The gateway key from ``keystore`` if given, else from ``$SURGE_CHAIN_KEY``."""
    environ = os.environ if env is None else env
    if keystore is not None:
        password = keystore_password(environ)
        if password is None:
            raise ChainKeyError(f"keystore {Path(keystore).name}: {PASSWORD_ENV} is not set")
        return load_keystore(keystore, password)
    key_hex = environ.get(KEY_ENV)
    if not key_hex:
        raise ChainKeyError(f"no chain key: give a keystore file or set {KEY_ENV}")
    return ChainKey.from_hex(key_hex)
