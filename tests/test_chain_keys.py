"""The gateway's chain key never shows up in logs, errors or reprs, and RPC
failures surface as ChainUnavailable; its EIP-191 signatures are eth-account's.

Each test provokes failures with a known key loaded, captures every log
record (all loggers, DEBUG) and the full formatted exception chain, and greps
them for the key in any spelling.
"""

from __future__ import annotations

import json
import logging
import pickle
import socket
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.chain import ChainKey, ChainKeyError, ChainUnavailable, ChainError, load_chain_key, open_chain
from gateway.chain.keys import KEY_ENV, PASSWORD_ENV
from gateway.demo.broker import free_port

# A throwaway key, only ever used in these tests.
KEY_HEX = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
PASSWORD = "correct horse battery staple"


def spellings(secret: str) -> list[str]:
    return [secret, secret.upper(), "0x" + secret, secret[:24], secret[-24:]]


def assert_clean(text: str, *secrets: str) -> None:
    for secret in secrets:
        for s in spellings(secret):
            assert s not in text, f"secret leaked: {text[:300]}"


def exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog


def test_key_repr_and_pickle() -> None:
    key = ChainKey.from_hex(KEY_HEX)
    assert key.address.startswith("0x")
    assert_clean(repr(key) + str(key) + f"{key}" + repr([key]), KEY_HEX)
    with pytest.raises(TypeError):
        pickle.dumps(key)


def test_env_key_and_bad_env_key(monkeypatch: pytest.MonkeyPatch, all_logs: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(KEY_ENV, "0x" + KEY_HEX)
    assert load_chain_key().address == ChainKey.from_hex(KEY_HEX).address
    bad = KEY_HEX[:-2] + "zz"  # almost the key: must not be echoed either
    monkeypatch.setenv(KEY_ENV, bad)
    with pytest.raises(ChainKeyError) as info:
        load_chain_key()
    assert_clean(exception_text(info.value) + all_logs.text, KEY_HEX, bad)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ChainKeyError, match=KEY_ENV):
        load_chain_key()


def test_keystore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, all_logs: pytest.LogCaptureFixture) -> None:
    keystore = tmp_path / "gateway-key.json"
    keystore.write_text(json.dumps(ChainKey.from_hex(KEY_HEX).encrypt(PASSWORD)))
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(ChainKeyError, match=PASSWORD_ENV):
        load_chain_key(keystore)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    assert load_chain_key(keystore).address == ChainKey.from_hex(KEY_HEX).address
    monkeypatch.setenv(PASSWORD_ENV, "wrong " + PASSWORD)
    with pytest.raises(ChainKeyError) as info:
        load_chain_key(keystore)
    keystore.write_text("{not json")
    with pytest.raises(ChainKeyError) as info2:
        load_chain_key(keystore)
    text = exception_text(info.value) + exception_text(info2.value) + all_logs.text
    assert_clean(text, KEY_HEX, PASSWORD)


def test_connection_refused_is_chain_unavailable(all_logs: pytest.LogCaptureFixture) -> None:
    key = ChainKey.from_hex(KEY_HEX)
    port = free_port()  # nothing listens there
    url = f"http://user:hunter2@127.0.0.1:{port}/v3/PROVIDERAPIKEY"
    for contract in (None, "0x" + "11" * 20):
        with pytest.raises(ChainUnavailable) as info:
            open_chain(url, key=key, contract=contract, timeout=2)
        text = exception_text(info.value)
        assert f"127.0.0.1:{port}" in str(info.value)
        assert "unavailable" in str(info.value)
        # No raw transport traceback hides behind the typed error.
        assert info.value.__cause__ is None and info.value.__suppress_context__
        for secret in ("PROVIDERAPIKEY", "hunter2"):
            assert secret not in text
        assert_clean(text + all_logs.text, KEY_HEX)


def test_timeout_is_chain_unavailable(all_logs: pytest.LogCaptureFixture) -> None:
    # A listener that accepts and never answers: the RPC call must time out.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        with pytest.raises(ChainUnavailable) as info:
            open_chain(f"http://127.0.0.1:{port}", key=ChainKey.from_hex(KEY_HEX), timeout=0.5)
        assert "ReadTimeout" in str(info.value) or "Timeout" in str(info.value)
        assert_clean(exception_text(info.value) + all_logs.text, KEY_HEX)
    finally:
        stop.set()
        thread.join()
        for c in conns:
            c.close()
        server.close()


def test_failures_on_a_live_chain_do_not_leak(all_logs: pytest.LogCaptureFixture) -> None:
    chain = open_chain("memory", key=ChainKey.from_hex(KEY_HEX))
    texts = [repr(chain), str(chain)]
    for args in [(1, b"\x00" * 32, 1), (5, b"\x01" * 32, 1), (1, b"\x01" * 32, 0)]:
        with pytest.raises(ChainError) as info:
            chain.submit(*args)
        texts.append(exception_text(info.value))
    chain.submit(1, b"\x02" * 32, 1)
    with pytest.raises(ChainError) as info:
        chain.submit(1, b"\x02" * 32, 1)
    texts.append(exception_text(info.value))
    with pytest.raises(ChainError) as info:
        open_chain("ws://127.0.0.1:1/" + KEY_HEX, key=ChainKey.from_hex(KEY_HEX))
    texts.append(exception_text(info.value))
    assert_clean("\n".join(texts) + all_logs.text, KEY_HEX)


@settings(max_examples=200, deadline=None)
@given(message=st.binary(max_size=600), seed=st.binary(min_size=32, max_size=32))
def test_sign_message_is_eth_accounts_eip191_signature(message: bytes, seed: bytes) -> None:
    # ChainKey signs through libsecp256k1 directly (the pipeline attests every
    # report); it must be the same 65 bytes eth-account gives, recovering to the address.
    from eth_account.messages import encode_defunct

    try:
        key = ChainKey.from_hex(seed.hex())
    except ChainKeyError:
        return  # zero or above the curve order: not a key
    expected = Account.from_key(seed).sign_message(encode_defunct(primitive=message)).signature
    sig = key.sign_message(message)
    assert sig == bytes(expected)
    assert Account.recover_message(encode_defunct(primitive=message), signature=sig) == key.address
