"""Agent building blocks on CPython and on the MicroPython unix port, plus
property checks of the device CBOR encoder against firmware_shim.cbor."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import bwprobe, cborw, probes
from conftest import ROOT, MicroRun
from firmware_shim import cbor
from tests.portable import agent_unit_checks

SCRIPT = ROOT / "tests" / "portable" / "agent_unit_checks.py"


def test_units_cpython(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    total = agent_unit_checks.main(str(tmp_path / "u"))
    assert "PASS %d" % total in capsys.readouterr().out


def test_units_micropython(tmp_path: Path, run_micropython: MicroRun) -> None:
    proc = run_micropython(SCRIPT, str(tmp_path / "u"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "PASS %d" % agent_unit_checks.main(str(tmp_path / "c"))


_leaf = st.integers(-(2**64), 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=20) | st.booleans() | st.none()
_key = st.integers(-(2**63), 2**63) | st.text(max_size=8) | st.binary(max_size=8)
_values = st.recursive(
    _leaf, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_key, inner, max_size=5), max_leaves=20
)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_device_encoder_matches_portable_cbor(v: object) -> None:
    assert cborw.dumps(v) == cbor.dumps(v)


def test_probe_stream_is_regenerable() -> None:
    nonce = bytes(range(16))
    whole = b"".join(bwprobe.stream_chunk(nonce, i) for i in range(3))
    import hashlib

    # protocol §2.6: chunk i = SHA-256(nonce || u32be(i) || u32be(j)) for j = 0, 1, ...
    expect = b"".join(
        hashlib.sha256(nonce + i.to_bytes(4, "big") + j.to_bytes(4, "big")).digest()
        for i in range(3)
        for j in range(16)
    )
    assert whole == expect
    m = cbor.loads(bwprobe.message(nonce, 7, 2, 3, 1100))
    assert m == [nonce, 7, 2, 3, expect[1024:1100]]


def test_probes_report_errors_instead_of_raising() -> None:
    errors: dict[str, str] = {}
    assert probes.storage(["/definitely/missing"], errors) is None
    assert errors == {"storage": "/definitely/missing ENOENT"}
    errors = {}
    assert probes.net("nosuchif0", errors) is None and errors == {"net": "no interface nosuchif0"}
    errors = {}
    got = probes.storage(["/", "/"], errors)  # one filesystem counted once
    assert errors == {} and got is not None and got[0] >= got[1] > 0
    assert probes.net("lo", errors) is not None
