"""The device side of the storage audit on CPython and on the MicroPython unix port
(tests/portable/storage_proof_checks.py, the same checks on both)."""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT, VECTORS, MicroRun
from tests.portable import storage_proof_checks

SCRIPT = ROOT / "tests" / "portable" / "storage_proof_checks.py"


def test_storage_proof_cpython(tmp_path: Path) -> None:
    assert storage_proof_checks.main(str(VECTORS), str(tmp_path / "c")) > 20


def test_storage_proof_micropython(run_micropython: MicroRun, tmp_path: Path) -> None:
    # 128K: this check file and the agent modules are compiled from .py here, and
    # the 4 KiB vector block and the oversized bad commands are built in RAM; the
    # board's 48K budget is checked on the .mpy bundle (tests/test_storage_audit_e2e.py).
    proc = run_micropython(SCRIPT, str(VECTORS), str(tmp_path / "m"), heap="128K")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    total = storage_proof_checks.main(str(VECTORS), str(tmp_path / "c"))
    assert proc.stdout.strip().splitlines()[-1] == "PASS %d" % total
