"""`surge flash` end to end: the real MicroPython unix port on a pseudo-terminal
as the board, a real Mosquitto, a real `surge gateway run`.

Covers: the bundle is copied, the key is generated inside the MicroPython
process and its secret never crosses the line, enrollment (file, then
database) reaches the gateway, the agent starts after the soft reset and
its first report is accepted; mpremote sees the same files; a re-flash
copies nothing; Wi-Fi credentials are never printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from broker import Mosquitto
from firmware_shim.host import bundle
from flash_helpers import ROOT, WIFI_PASSWORD, agent_config, secret_forms, start_gateway, stop, surge
from pty_board import PtyBoard, micropython_binary


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mosquitto, Path]]:
    """One broker and one gateway shared by this module's tests."""
    work = tmp_path_factory.mktemp("lab")
    broker = Mosquitto(work / "mosquitto")
    broker.start()
    db = work / "gw.db"
    gw = start_gateway(db, broker)
    try:
        yield broker, db
    finally:
        stop(gw)
        broker.stop()


def board_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_flash_enroll_file_then_first_report_accepted(lab: tuple[Mosquitto, Path], tmp_path: Path) -> None:
    broker, db = lab
    cfg = agent_config(tmp_path, broker.url)
    host_key = tmp_path / "dev.key"  # `surge agent init` made one on the host: the board must not use it
    enroll = tmp_path / "enroll.json"
    board = PtyBoard(tmp_path / "board", micropython_binary()).start()
    try:
        # 1. Flash with an enrollment file nobody has imported yet: the bundle is
        #    copied, the key made on the board, the agent reports, and the gateway
        #    rejects it as unknown: `surge flash` says "not enrolled".
        first = surge(
            "flash",
            "--board",
            "esp32",
            "--port",
            board.port,
            "--config",
            str(cfg),
            "--enroll-out",
            str(enroll),
            "--no-board-check",
            "--wait",
            "40",
        )
        assert first.returncode == 2, first.stdout + first.stderr
        assert "not enrolled" in first.stderr.splitlines()[-1], first.stderr[-2000:]
        files = sum(len(f) for f in bundle.MODULE_FILES.values()) + 2  # + main.py, config.json
        assert "copying %d of %d files" % (files, files) in first.stderr
        key_file = board.root / "dev.key"
        key = json.loads(key_file.read_text())
        entry = json.loads(enroll.read_text())
        assert entry == [
            {"device_id": key["device_id"], "public_key": key["public"], "board": "esp32", "fleet": "demo", "owner": ""}
        ]
        assert key["public"] != json.loads(host_key.read_text())["public"]
        assert "device key created on the device; device id %s" % key["device_id"] in first.stderr
        # The secret was made by the MicroPython process: it never crossed the line.
        transcript = bytes(board.sent) + bytes(board.received)
        assert key["public"].encode() in transcript  # what did cross: the public key
        for form in secret_forms(key_file):
            assert form not in transcript
        assert b"surge-ed25519" not in bytes(board.received)  # the key file itself was never read back

        # 2. The operator imports the file; re-flashing copies nothing and the
        #    first report of the new boot is accepted (seen on the verified topic).
        imp = subprocess.run(
            [sys.executable, "-m", "agent.cli", "gateway", "enroll", "--db", str(db), "--from", str(enroll)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert imp.returncode == 0, imp.stderr
        again = surge(
            "flash",
            "--board",
            "esp32",
            "--port",
            board.port,
            "--config",
            str(cfg),
            "--enroll-out",
            str(enroll),
            "--no-board-check",
            "--wait",
            "60",
        )
        assert again.returncode == 0, again.stdout + again.stderr[-3000:]
        assert "nothing copied" in again.stderr
        assert "%d files, 0 copied" % files in again.stdout
        assert "device key already on the device" in again.stderr
        assert "first report accepted by the gateway" in again.stdout
        assert "verified topic" in again.stdout or "receipt topic" in again.stdout
        for out in (first, again):
            assert WIFI_PASSWORD not in out.stdout + out.stderr

        # 3. mpremote (PyPI), on the same pty, sees the same files with the same contents.
        ref = tmp_path / "reference"
        bundle.build("esp32", str(cfg), str(ref))
        expected = board_files(ref)
        on_board = board_files(board.root)
        assert {k: on_board[k] for k in expected} == expected
        listing = subprocess.run(
            [
                sys.executable,
                "-m",
                "mpremote",
                "connect",
                board.port,
                "resume",
                "fs",
                "ls",
                ":",
                "+",
                "fs",
                "ls",
                ":agent",
                "+",
                "fs",
                "ls",
                ":firmware_shim",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listing.returncode == 0, listing.stderr
        names = {ln.split()[-1] for ln in listing.stdout.splitlines() if ln.strip() and not ln.startswith("ls")}
        for rel in expected:
            assert rel.rsplit("/", 1)[-1] in names, (rel, listing.stdout)
        down = tmp_path / "via-mpremote"
        down.mkdir()
        copy = subprocess.run(
            [
                sys.executable,
                "-m",
                "mpremote",
                "connect",
                board.port,
                "resume",
                "fs",
                "cp",
                "-r",
                ":agent",
                ":firmware_shim",
                ":main.py",
                ":config.json",
                str(down) + "/",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert copy.returncode == 0, copy.stderr
        assert board_files(down) == expected
    finally:
        board.stop()


def test_flash_gateway_db_direct(lab: tuple[Mosquitto, Path], tmp_path: Path) -> None:
    """--gateway-db enrolls straight into the database; acceptance is read from it."""
    broker, db = lab
    cfg = agent_config(tmp_path, broker.url)
    with PtyBoard(tmp_path / "board", micropython_binary()) as board:
        res = surge(
            "flash",
            "--board",
            "esp32",
            "--port",
            board.port,
            "--config",
            str(cfg),
            "--gateway-db",
            str(db),
            "--owner",
            "maker-1",
            "--no-board-check",
            "--wait",
            "60",
        )
        assert res.returncode == 0, res.stdout + res.stderr[-3000:]
        key = json.loads((board.root / "dev.key").read_text())
        assert "enrolled %s in %s" % (key["device_id"], db) in res.stderr
        assert "first report accepted by the gateway: boot 1, seq " in res.stdout
        # The agent's own start line after the soft reset, relayed from the board.
        assert "board> surge-agent" in res.stderr
        assert WIFI_PASSWORD not in res.stdout + res.stderr
        devices = subprocess.run(
            [sys.executable, "-m", "agent.cli", "gateway", "devices", "--db", str(db), "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        rows = {r["device_id"]: r for r in json.loads(devices.stdout)}
        assert rows[key["device_id"]]["owner"] == "maker-1" and rows[key["device_id"]]["reports"] >= 1
