"""`surge keys` and `surge decode`: outputs, file modes, one-line errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import VECTORS


def surge(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    # Through the real console entry point, as a user runs it.
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], input=stdin, capture_output=True, timeout=60)


def _reference() -> dict[str, str]:
    doc: dict[str, str] = json.loads((VECTORS / "cose_sign1.json").read_text())["reference_report"]
    return doc


def test_keys_generate_and_show(tmp_path: Path) -> None:
    key = tmp_path / "device.key"
    proc = surge("keys", "generate", "--out", str(key))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    out = proc.stdout.decode()
    assert "device id:" in out and "public key:" in out
    doc = json.loads(key.read_text())
    assert doc["secret"] not in out  # the secret is never printed
    shown = json.loads(surge("keys", "show", str(key)).stdout)
    assert shown == {"device_id": doc["device_id"], "public_key": doc["public"]}


def test_keys_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    key = tmp_path / "device.key"
    key.write_text("precious")
    proc = surge("keys", "generate", "--out", str(key))
    assert proc.returncode == 2
    assert key.read_text() == "precious"
    err = proc.stderr.decode()
    assert err.startswith("surge: error:") and "refusing to overwrite" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_decode_valid_report(tmp_path: Path) -> None:
    ref = _reference()
    path = tmp_path / "report.cbor"
    path.write_bytes(bytes.fromhex(ref["cbor"]))
    proc = surge("decode", str(path), "--pubkey", ref["public"])
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["signature"] == {"valid": True, "reason": "ok"}
    assert out["header"]["protected"]["alg"] == "EdDSA"
    assert out["claims"]["seq"] == 123456
    assert out["claims"]["storage_total"] == 31914983424
    assert out["claims"]["synced"] is True
    assert out["size"] == len(bytes.fromhex(ref["cbor"]))


def test_decode_reads_hex_from_stdin_and_reports_bad_signature() -> None:
    ref = _reference()
    data = bytearray(bytes.fromhex(ref["cbor"]))
    data[40] ^= 1  # inside the payload
    proc = surge("decode", "-", "--pubkey", ref["public"], stdin=data.hex().encode())
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["signature"]["valid"] is False
    assert "does not verify" in out["signature"]["reason"]


def test_decode_wrong_key_names_the_kid_mismatch() -> None:
    ref = _reference()
    other = bytes.fromhex(json.loads((VECTORS / "rfc8032_ed25519.json").read_text())["vectors"][1]["public"])
    proc = surge("decode", "-", "--pubkey", other.hex(), stdin=ref["cbor"].encode())
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["signature"]["valid"] is False


def test_decode_without_key_does_not_claim_validity() -> None:
    proc = surge("decode", "-", stdin=_reference()["cbor"].encode())
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["signature"]["valid"] is None


@pytest.mark.parametrize(
    "payload,needle",
    [
        (b"\xd2\x84", "malformed_cbor"),
        (bytes.fromhex("d3820102"), "not_cose_sign1"),
        (b"", "malformed_cbor"),
    ],
)
def test_decode_malformed_is_one_line(payload: bytes, needle: str) -> None:
    proc = surge("decode", "-", stdin=payload)
    err = proc.stderr.decode()
    assert proc.returncode == 2
    assert needle in err and "Traceback" not in err and err.count("\n") == 1


def test_decode_missing_file_and_bad_pubkey(tmp_path: Path) -> None:
    proc = surge("decode", str(tmp_path / "nope.cbor"))
    assert proc.returncode == 2 and b"No such file" in proc.stderr
    proc = surge("decode", "-", "--pubkey", "abcd", stdin=_reference()["cbor"].encode())
    assert proc.returncode == 2 and b"32 bytes" in proc.stderr


def test_keys_show_rejects_non_key_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    proc = surge("keys", "show", str(bad))
    assert proc.returncode == 2 and b"not a Surge key file" in proc.stderr
