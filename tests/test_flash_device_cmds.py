"""`surge device ls|cat|rm|reset` against the MicroPython unix port on a pty."""

from __future__ import annotations

from pathlib import Path

from broker import free_port
from flash_helpers import agent_config, secret_forms, surge
from pty_board import PtyBoard, micropython_binary


def test_device_commands(tmp_path: Path) -> None:
    cfg = agent_config(tmp_path, "mqtt://127.0.0.1:%d" % free_port(), interval=60)
    with PtyBoard(tmp_path / "board", micropython_binary()) as board:
        res = surge(
            "flash",
            "--board",
            "esp32",
            "--port",
            board.port,
            "--config",
            str(cfg),
            "--wait",
            "0",
            "--enroll-out",
            str(tmp_path / "e.json"),
            "--no-board-check",
        )
        assert res.returncode == 0, res.stderr
        p = board.port

        ls = surge("device", "ls", "--port", p)
        assert ls.returncode == 0, ls.stderr
        names = [ln.split()[-1] for ln in ls.stdout.splitlines()]
        assert {"agent/", "firmware_shim/", "main.py", "config.json", "dev.key"} <= set(names)
        rec = surge("device", "ls", "-r", "agent", "--port", p)
        assert "runner.py" in rec.stdout.split()

        cat = surge("device", "cat", "main.py", "--port", p)
        assert cat.returncode == 0 and cat.stdout == (board.root / "main.py").read_text()

        # The key file is recognised on the board and never sent.
        mark = len(board.received)
        key = surge("device", "cat", "dev.key", "--port", p)
        assert key.returncode == 2 and "is the device's secret key: it never leaves the board" in key.stderr
        for form in secret_forms(board.root / "dev.key"):
            assert form not in bytes(board.received[mark:])

        missing = surge("device", "cat", "nope.txt", "--port", p)
        assert missing.returncode == 2 and "no such file or directory on the device: nope.txt" in missing.stderr
        (board.root / "junk.txt").write_text("x")
        assert surge("device", "rm", "junk.txt", "--port", p).returncode == 0
        assert not (board.root / "junk.txt").exists()
        dir_rm = surge("device", "rm", "firmware_shim", "--port", p)
        assert dir_rm.returncode == 2 and "is a directory: use rm -r" in dir_rm.stderr
        (board.root / "old" / "sub").mkdir(parents=True)
        (board.root / "old" / "sub" / "f").write_text("x")
        assert surge("device", "rm", "-r", "old", "--port", p).returncode == 0
        assert not (board.root / "old").exists()

        reset = surge("device", "reset", "--port", p, "--follow", "4")
        assert reset.returncode == 0 and "surge-agent" in reset.stdout, reset.stdout + reset.stderr


def test_key_fallback_without_devkey_module(tmp_path: Path) -> None:
    """A bundle without agent.devkey: the key is still made on the board, with
    the bundle's firmware_shim.ed25519, in the same key-file format."""
    import json

    from nacl.signing import SigningKey

    from firmware_shim.host import bundle
    from firmware_shim.host.flash import device_id, ensure_key
    from firmware_shim.host.serial_transport import SerialTransport

    cfg = agent_config(tmp_path, "mqtt://127.0.0.1:%d" % free_port())
    with PtyBoard(tmp_path / "board", micropython_binary()) as board:
        bundle.build("esp32", str(cfg), str(board.root))
        (board.root / "agent" / "devkey.py").unlink()
        t = SerialTransport(board.port)
        try:
            t.enter_raw_repl()
            public, created = ensure_key(t, t.info().cwd, "fallback.key")
            again, created_again = ensure_key(t, t.info().cwd, "fallback.key")
        finally:
            t.close()
        doc = json.loads((board.root / "fallback.key").read_text())
        assert created and not created_again and again == public
        assert doc["type"] == "surge-ed25519" and doc["device_id"] == device_id(public)
        assert bytes(SigningKey(bytes.fromhex(doc["secret"])).verify_key) == public
        for form in secret_forms(board.root / "fallback.key"):
            assert form not in bytes(board.sent) + bytes(board.received)
