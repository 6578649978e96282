"""CPython agent: resident memory and CPU time per report cycle (child process of bench.run).

    python -m bench.agent_cycle CONFIG N

Connects like `surge agent run` (paho link), runs N cycles (measure, probe,
sign, outbox, publish + PUBACK) and prints one JSON line: CPU seconds per
cycle (user + system, this process only, connect excluded), wall ms per
cycle, and VmRSS / VmHWM after the last cycle.
"""

from __future__ import annotations

import gc
import json
import sys
import time

from agent import config, devkey, report
from agent.link_paho import Link
from agent.runner import Agent


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main(path: str, n: int) -> None:
    cfg = config.load(path)
    secret, public = devkey.load(cfg.path("key_file"))
    link = Link("surge-" + report.device_id(public), cfg.get("broker.host"), cfg.get("broker.port"))
    agent = Agent(cfg, secret, public, link, sys.implementation.name, lambda m: None)
    assert agent.connect()
    agent.cycle()  # warm-up: first-use imports and caches are not per-cycle costs
    agent.flush()
    gc.collect()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        agent.cycle()
        agent.flush()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    out = {
        "cycles": n,
        "cpu_s_per_cycle": cpu / n,
        "wall_ms_per_cycle": wall * 1000 / n,
        "rss_kb": _status_kb("VmRSS"),
        "hwm_kb": _status_kb("VmHWM"),
    }
    agent.stop()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
