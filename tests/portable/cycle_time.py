"""Time of one report cycle (measure, bandwidth probe, sign, outbox, state)
and of delivering it (publish + PUBACK), on either runtime.

    python -m tests.portable.cycle_time CONFIG [N]                 (CPython, paho link)
    micropython DIR/../cycle_time.py DIR/config.json [N]           (bundle dir on MICROPYPATH)

Prints "cycle ms: min/avg/max" and "deliver ms: min/avg/max" over N cycles.
"""

import gc
import sys

from agent import clock, config, devkey, report
from agent.runner import Agent


def main(path, n=5):
    cfg = config.load(path)
    secret, public = devkey.load(cfg.path("key_file"))
    args = ("surge-" + report.device_id(public), cfg.get("broker.host"), cfg.get("broker.port"))
    if sys.implementation.name == "micropython":
        from agent.link import Link
    else:
        from agent.link_paho import Link
    agent = Agent(cfg, secret, public, Link(*args), sys.implementation.name, lambda m: None)
    assert agent.connect()
    cyc = []
    dlv = []
    for _ in range(n):
        gc.collect()
        t0 = clock.ms()
        agent.cycle()
        t1 = clock.ms()
        agent.flush()
        t2 = clock.ms()
        cyc.append(t1 - t0)
        dlv.append(t2 - t1)
    agent.stop()
    print("cycle ms: %d/%d/%d" % (min(cyc), sum(cyc) // n, max(cyc)))
    print("deliver ms: %d/%d/%d" % (min(dlv), sum(dlv) // n, max(dlv)))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5)
