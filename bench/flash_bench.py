"""Flash time and bytes copied for the esp32 bundle, from .py and from .mpy.

Runs `surge flash --wait 0` against the MicroPython unix port on a pty
(tests/pty_board.py), on a fresh "board" each time, once at pty speed and
once paced like the 115200-baud UART of an ESP32-DevKitC's USB bridge.

    .venv/bin/python bench/flash_bench.py
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

from flash_helpers import agent_config, surge  # noqa: E402
from pty_board import PtyBoard, micropython_binary  # noqa: E402

LINE = re.compile(r"(\d+) files, (\d+) copied \((\d+) of (\d+) bytes\) in ([\d.]+) s; (\d+) bytes sent")


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg = agent_config(work, "mqtt://127.0.0.1:1883")
        for mpy in (False, True):
            for baud in (None, 115200):
                with PtyBoard(work / ("b-%s-%s" % (mpy, baud)), micropython_binary(), baud=baud) as board:
                    args = [
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
                        str(work / "e.json"),
                        "--no-board-check",
                    ] + (["--mpy"] if mpy else [])
                    started = time.monotonic()
                    res = surge(*args)
                    wall = time.monotonic() - started
                    m = LINE.search(res.stdout)
                    assert res.returncode == 0 and m, res.stderr
                    rows.append(
                        {
                            "bundle": ".mpy" if mpy else ".py",
                            "line": "115200 baud" if baud else "pty",
                            "files": int(m.group(2)),
                            "bytes_copied": int(m.group(3)),
                            "copy_s": float(m.group(5)),
                            "wire_bytes_sent": int(m.group(6)),
                            "command_s": round(wall, 2),
                        }
                    )
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
