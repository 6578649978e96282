"""firmware_shim.mqtt byte for byte, on CPython and on the MicroPython unix port."""

from __future__ import annotations

import pytest

from conftest import ROOT, MicroRun
from tests.portable import mqtt_shim_checks

SCRIPT = ROOT / "tests" / "portable" / "mqtt_shim_checks.py"


def test_mqtt_shim_cpython(capsys: pytest.CaptureFixture[str]) -> None:
    total = mqtt_shim_checks.main()
    assert "PASS %d" % total in capsys.readouterr().out


def test_mqtt_shim_micropython(run_micropython: MicroRun) -> None:
    proc = run_micropython(SCRIPT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "PASS %d" % mqtt_shim_checks.main()
