"""The spec vectors (RFC 8032, RFC 8949 App. A, RFC 9052) on CPython and on MicroPython."""

from __future__ import annotations

import pytest

from conftest import ROOT, VECTORS, MicroRun
from tests.portable import check_vectors

SCRIPT = ROOT / "tests" / "portable" / "check_vectors.py"


def test_vectors_cpython(capsys: pytest.CaptureFixture[str]) -> None:
    total = check_vectors.main(str(VECTORS))
    assert total > 200
    assert "PASS %d" % total in capsys.readouterr().out


def test_vectors_micropython(run_micropython: MicroRun) -> None:
    proc = run_micropython(SCRIPT, str(VECTORS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cpython_total = check_vectors.main(str(VECTORS))
    assert proc.stdout.strip().splitlines()[-1] == "PASS %d" % cpython_total


def test_sign_and_verify_under_64k_heap(run_micropython: MicroRun) -> None:
    proc = run_micropython(ROOT / "tests" / "portable" / "sign_at_heap.py", heap="64K")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ok, size, sign_ms, verify_ms = proc.stdout.split()
    assert ok == "OK"
    print("MicroPython (64K heap): report %s bytes, sign %s ms, verify %s ms" % (size, sign_ms, verify_ms))
    assert int(size) <= 200
