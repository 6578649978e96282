"""The esp32 bundle on the real MicroPython unix port (64K heap from .py), probing through a real
Mosquitto to a real `surge gateway run`: its 256-byte-chunk runs are checked and its reports attested.

(From .mpy in the 48K heap the bundle's probe raises MemoryError today, so those reports carry
errors.bw and no bw_up: test_agent_micropython.py does not ask it for one either.)"""

from __future__ import annotations

import json
from pathlib import Path

from broker import Mosquitto
from gw_helpers import Collector
from gw_process import query, start_gateway, stop, surge, wait_for, wait_online
from test_agent_micropython import HEAP_PY, _build, _host_key, _run


def test_esp32_bundle_probe_runs_are_attested(tmp_path: Path, micropython: str) -> None:
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    db = tmp_path / "gw.db"
    host_key, key = _host_key(tmp_path)
    bundle = _build(tmp_path, broker.port, "--with-key", str(host_key))  # 1024-byte runs
    surge("gateway", "enroll", "--db", str(db), "--pubkey", key.public.hex(), "--board", "esp32", "--fleet", "test")
    gw = start_gateway(db, broker)
    watch = Collector(broker.port, "surge/v1/+/+/verified")
    try:
        wait_online(broker, gw)
        proc = _run(micropython, bundle, HEAP_PY, 3)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        wait_for(lambda: len(query(db, "SELECT 1 FROM attestations")) >= 3, 60, "3 attestations")
        runs = query(db, "SELECT outcome, chunks, bw_up FROM probe_runs ORDER BY seq")
        assert [(o, c) for o, c, _ in runs] == [("checked", 4)] * 3 and all(bw for _, _, bw in runs), runs
        wait_for(lambda: len(watch.of_kind("verified")) >= 3, 30, "3 verified messages")
        first = [json.loads(p) for _, p in watch.of_kind("verified")][:3]
        assert all(v["attested"]["bw_up"] and "bw_unverified" not in v["attested"]["flags"] for v in first), first
    finally:
        watch.close()
        stop(gw)
        broker.stop()
