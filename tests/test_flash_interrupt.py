"""Killing `surge flash` mid-file leaves the previous install runnable, and the
next flash finishes the job.  The pty board is paced like a 115200-baud UART
during the interrupted flash, so there is time to kill it inside a file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from broker import Mosquitto
from firmware_shim.host import bundle
from flash_helpers import agent_config, surge, surge_popen, wait_until
from pty_board import PtyBoard, micropython_binary


def digests(root: Path, names: list[str]) -> dict[str, str | None]:
    return {n: hashlib.sha256((root / n).read_bytes()).hexdigest() if (root / n).exists() else None for n in names}


def test_interrupted_copy_keeps_previous_install(tmp_path: Path, broker: Mosquitto) -> None:
    cfg_a = agent_config(tmp_path, broker.url, name="dev", interval=1)
    ref_a = tmp_path / "ref-a"
    files_a = list(bundle.build("esp32", str(cfg_a), str(ref_a)).files)
    with PtyBoard(tmp_path / "board", micropython_binary()) as board:
        a = surge(
            "flash",
            "--board",
            "esp32",
            "--port",
            board.port,
            "--config",
            str(cfg_a),
            "--enroll-out",
            str(tmp_path / "enroll.json"),
            "--no-board-check",
            "--wait",
            "0",
        )
        assert a.returncode == 0, a.stderr
        installed = digests(board.root, files_a)
        assert installed == digests(ref_a, files_a)

        # Version B: .mpy modules and a new interval, so every file changes.
        doc = json.loads(cfg_a.read_text())
        doc["interval"] = 3
        cfg_b = tmp_path / "dev-b.json"
        cfg_b.write_text(json.dumps(doc))
        board.baud = 115200
        mark = len(board.sent)
        proc = surge_popen(
            "flash",
            "--board",
            "esp32",
            "--port",
            board.port,
            "--config",
            str(cfg_b),
            "--mpy",
            "--enroll-out",
            str(tmp_path / "enroll.json"),
            "--no-board-check",
            "--wait",
            "0",
        )

        def inside_a_file() -> bool:
            sent = bytes(board.sent[mark:])
            at = sent.find(b"agent/runner.mpy" + b".surge-new")
            return at >= 0 and sent.count(b"_w(_d(", at) >= 2

        try:
            assert wait_until(inside_a_file, 60), bytes(board.sent[mark:])[-500:]
        finally:
            proc.kill()
            proc.communicate()
        board.baud = None

        # Nothing of the old install was touched; B exists only as temporary files.
        assert digests(board.root, files_a) == installed
        assert not list(board.root.rglob("*.mpy"))
        partial = sorted(p.relative_to(board.root).as_posix() for p in board.root.rglob("*.surge-new"))
        assert "agent/runner.mpy.surge-new" in partial

        # The board resets into the previous install, which runs and reports.
        reset = surge("device", "reset", "--port", board.port, "--follow", "8")
        assert reset.returncode == 0, reset.stderr
        assert "surge-agent" in reset.stdout and "connected to" in reset.stdout, reset.stdout
        assert "Traceback" not in reset.stdout

        # Flashing B again completes it and cleans up.
        mark = board.mark()
        b = surge(
            "flash",
            "--board",
            "esp32",
            "--port",
            board.port,
            "--config",
            str(cfg_b),
            "--mpy",
            "--enroll-out",
            str(tmp_path / "enroll.json"),
            "--no-board-check",
            "--wait",
            "0",
        )
        assert b.returncode == 0, b.stderr
        assert "removed %d temporary files left by an interrupted flash" % len(partial) in b.stderr
        assert not list(board.root.rglob("*.surge-new"))
        assert not list((board.root / "agent").glob("*.py"))
        assert (board.root / "agent" / "runner.mpy").exists()
        assert json.loads((board.root / "config.json").read_text())["interval"] == 3
        assert board.wait_for(lambda out: b"report seq" in out, 20, since=mark)
