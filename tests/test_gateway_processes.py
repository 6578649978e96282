"""The gateway's two processes live and die together (gateway/ingest_process.py).

A kill -9 of `surge gateway run` must not leave its ingest process behind
consuming the fleet's session, and an ingest process that dies must stop the
gateway with an error, so a supervisor restarts both.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from broker import Mosquitto
from gw_process import gateway_log, start_gateway, stop, wait_for, wait_online


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir("/proc/%d/task" % pid):
        out += [int(c) for c in Path("/proc/%d/task/%s/children" % (pid, task)).read_text().split()]
    return out


def alive(pid: int) -> bool:
    try:
        state = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ingest_dies_with_the_gateway(tmp_path: Path, broker: Mosquitto) -> None:
    gw = start_gateway(tmp_path / "gw.db", broker)
    try:
        wait_online(broker, gw)
        (ingest,) = children(gw.pid)
        assert alive(ingest)
        gw.send_signal(signal.SIGKILL)
        gw.wait(10)
        wait_for(lambda: not alive(ingest), 10, "the ingest process gone with its parent")
    finally:
        stop(gw)


def test_gateway_stops_with_an_error_when_ingest_dies(tmp_path: Path, broker: Mosquitto) -> None:
    db = tmp_path / "gw.db"
    gw = start_gateway(db, broker)
    try:
        wait_online(broker, gw)
        (ingest,) = children(gw.pid)
        os.kill(ingest, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while gw.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gw.returncode == 1, gateway_log(db)[-2000:]
        assert "the ingest process exited (-9); stopping the gateway" in gateway_log(db)
    finally:
        stop(gw)
