"""Group 1's sustained run alone, at a rate you choose (docs/performance.md, "The end-to-end rate").

    .venv/bin/python -m bench.sustained RATE [SECONDS]

Offers RATE reports/s for SECONDS (default 20) to a fresh Mosquitto and
`surge gateway run` (default configuration, 10,000 devices as in the full
bench) and prints the stored and receipted rates over the steady window,
their ratio, the publish -> anchored latencies and the CPU seconds of the
service and ingest processes, as one JSON line.  Run it back to back with
another build to compare: on a shared machine single runs vary widely.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from bench import run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rate", type=float, help="reports offered per second")
    ap.add_argument("seconds", type=float, nargs="?", default=20.0, help="how long (default 20)")
    a = ap.parse_args()
    sizes = replace(run.FULL, sustained_seconds=a.seconds)
    with tempfile.TemporaryDirectory(prefix="surge-sustained-") as tmp:
        out = run.sustained(Path(tmp) / "sustained", sizes, a.rate)
    out["ratio"] = out["receipted_per_s"] / out["stored_per_s"] if out["stored_per_s"] else 0.0
    print(json.dumps(out))


if __name__ == "__main__":
    main()
