"""The esp32 bundle on the real MicroPython unix port, probing through a real Mosquitto to a real
`surge gateway run`: its 256-byte-chunk runs are checked and its reports attested, from .py in the
64K heap and from .mpy in the 48K target heap.

At 48K from .mpy the probe used to lose a run now and then (its chunk found no free piece of
heap).  Since signing streams its pieces through SHA-512 instead of joining them (~1 KB less
resident, smaller blocks at the peak), 4 runs of this test at 48K, one under taskset -c 0, had
every run checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker import Mosquitto
from gw_helpers import Collector
from gw_process import query, start_gateway, stop, surge, wait_for, wait_online
from test_agent_micropython import HEAP_PY, _build, _host_key, _run

# The report cycle's target heap (see the top).
HEAP_MPY_PROBING = "48K"


@pytest.mark.parametrize("mpy,heap", [(False, HEAP_PY), (True, HEAP_MPY_PROBING)], ids=["py", "mpy"])
def test_esp32_bundle_probe_runs_are_attested(tmp_path: Path, micropython: str, mpy: bool, heap: str) -> None:
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    db = tmp_path / "gw.db"
    host_key, key = _host_key(tmp_path)
    bundle = _build(tmp_path, broker.port, *(["--mpy"] if mpy else []), "--with-key", str(host_key))  # 1024-byte runs
    surge("gateway", "enroll", "--db", str(db), "--pubkey", key.public.hex(), "--board", "esp32", "--fleet", "test")
    gw = start_gateway(db, broker)
    watch = Collector(broker.port, "surge/v1/+/+/verified")
    try:
        wait_online(broker, gw)
        proc = _run(micropython, bundle, heap, 3)
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
