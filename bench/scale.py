"""Group 7's throughput at a fleet size and run length you choose (docs/performance.md, "Many devices").

    .venv/bin/python -m bench.scale DEVICES:REPORTS [DEVICES:REPORTS ...] [--rounds N]

Each pair is a fresh Mosquitto and `surge gateway run` (default
configuration) receiving REPORTS reports from DEVICES enrolled devices, as
fast as the publisher goes; the pairs run in turn, N rounds, and each run
prints one JSON line: reports stored per second, gateway CPU per report
(both processes) and loaded RSS.  Comparing 10000:100000 with
100000:100000 separates the cost of a longer run from the cost of seeing
each device for the first time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench import gateway_throughput as gt
from bench import run


def pair(text: str) -> tuple[int, int]:
    devices, _, reports = text.partition(":")
    try:
        return int(devices), int(reports or devices)
    except ValueError:
        raise argparse.ArgumentTypeError("%r: give DEVICES:REPORTS, e.g. 100000:100000" % text) from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", type=pair, nargs="+", help="DEVICES:REPORTS")
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="surge-scale-") as tmp:
        for rnd in range(a.rounds):
            for devices, reports in a.pairs:
                messages, publics = gt.presign(reports, devices)
                res = run.gateway_rate(
                    Path(tmp) / ("gw-%d-%d-%d" % (devices, reports, rnd)), messages, publics, timeout=600
                )
                print(
                    json.dumps(
                        {
                            "devices": devices,
                            "reports": reports,
                            "round": rnd,
                            "per_s": round(res["per_s"]),
                            "cpu_us_per_report": round(res["cpu_us_per_report"]),
                            "rss_loaded_mib": round(res["rss_loaded_kb"] / 1024, 1),
                            "rejections": res["rejections"],
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
