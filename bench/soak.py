"""`make soak`: the fault suite and the fuzzers run long, with a summary.

    .venv/bin/python bench/soak.py [--minutes 20] [--kills 200] [--fuzz 1000000] [--out bench/results]

Runs, in order, each bounded (the defaults fit in about 20 minutes on 2 cores):

1. gateway kill -9 at random moments under sustained load (``--kills``), hardhat chain;
2. broker SIGKILL + restart under `surge agent run` agents, crash by crash (no loss
   expected) and as a crash storm (loss measured and explained, docs/reliability.md);
3. agent kill -9 during outbox writes;
4. gateway disk full (tmpfs as root, else skipped and said so);
5. the seeded mutation fuzzer (``--fuzz`` inputs) and atheris when importable.

Writes ``soak-latest.json`` and ``soak-latest.txt`` into ``--out``: faults
injected, reports sent, anchored, lost, duplicated, per scenario and in total.
Exit status 1 if anything that must hold did not (loss outside the crash
storm, a duplicate, a fuzz crash).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from broker import Mosquitto  # noqa: E402
from chain_fixtures import ensure_node_modules  # noqa: E402
from faults_lib import (  # noqa: E402
    Figures,
    agent_power_cuts,
    broker_kills_with_agents,
    can_mount_tmpfs,
    gateway_disk_full,
    gateway_random_kills,
)
from gw_process import HardhatNode, Miner  # noqa: E402


def _run(name: str, results: list[dict[str, Any]], fn: Callable[[Path], Figures]) -> None:
    print("== %s" % name, flush=True)
    with tempfile.TemporaryDirectory(prefix="surge-soak-") as d:
        try:
            fig = fn(Path(d))
            row = fig.as_dict()
            row["ok"] = True
        except Exception as exc:
            row = {
                "scenario": name,
                "ok": False,
                "error": "%s: %s" % (type(exc).__name__, exc),
                "trace": traceback.format_exc()[-4000:],
            }
    print(json.dumps({k: v for k, v in row.items() if k != "trace"}), flush=True)
    results.append(row)


def _with_broker(tmp: Path, fn: Callable[[Mosquitto], Figures]) -> Figures:
    b = Mosquitto(tmp / "mosquitto")
    b.start()
    try:
        return fn(b)
    finally:
        b.stop()


def fuzz(inputs: int, seed: int, atheris_runs: int) -> dict[str, Any]:
    from fuzz_harness import Harness, save_crash

    t0 = time.monotonic()
    h = Harness()
    crashes = h.run(inputs, seed, on_crash=save_crash)
    row: dict[str, Any] = {
        "scenario": "fuzz_mutation",
        "inputs": h.counts["inputs"],
        "crashes": len(crashes),
        "accepted": h.counts["accepted"],
        "signed_mutants": h.counts["signed_mutants"],
        "slowest_input_s": round(h.slowest, 4),
        "outcomes": h.outcomes,
        "seconds": round(time.monotonic() - t0, 1),
        "ok": not crashes,
        "first_crashes": [str(c)[:300] for c in crashes[:3]],
    }
    try:
        import atheris  # noqa: F401
    except ImportError as exc:
        row["atheris"] = "not run: %s" % exc
        return row
    t1 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fuzz_atheris.py"), "-runs=%d" % atheris_runs, "-max_total_time=600"],
        capture_output=True,
        text=True,
    )
    done = [ln for ln in proc.stderr.splitlines() if ln.startswith("Done ")]
    row["atheris"] = {
        "returncode": proc.returncode,
        "summary": done[-1] if done else proc.stderr[-500:],
        "seconds": round(time.monotonic() - t1, 1),
    }
    row["ok"] = row["ok"] and proc.returncode == 0
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=200, help="gateway kill -9 count")
    ap.add_argument("--broker-kills", type=int, default=20)
    ap.add_argument("--storm-kills", type=int, default=10)
    ap.add_argument("--agent-cuts", type=int, default=100)
    ap.add_argument("--fuzz", type=int, default=1_000_000, help="mutation fuzzer inputs")
    ap.add_argument("--atheris-runs", type=int, default=300_000)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    started = time.time()
    results: list[dict[str, Any]] = []
    ensure_node_modules()
    node = HardhatNode()
    node.wait_ready()
    miner = Miner(node)
    try:
        _run(
            "gateway_kill9_random",
            results,
            lambda d: _with_broker(
                d,
                lambda b: gateway_random_kills(
                    d, b, node, kills=args.kills, seed=args.seed, devices=16, max_s=2.0, batch_size=200, pause=0.02
                ),
            ),
        )
    finally:
        miner.stop()
        node.stop()
    _run(
        "broker_kill9_with_agents",
        results,
        lambda d: _with_broker(
            d,
            lambda b: broker_kills_with_agents(
                d, b, kills=args.broker_kills, agents=4, reports=40 + 12 * args.broker_kills, seed=args.seed + 1
            ),
        ),
    )
    _run(
        "broker_kill9_storm",
        results,
        lambda d: _with_broker(
            d,
            lambda b: broker_kills_with_agents(
                d, b, kills=args.storm_kills, agents=4, reports=150, seed=args.seed + 2, storm=True
            ),
        ),
    )
    _run(
        "agent_power_cut_outbox",
        results,
        lambda d: _with_broker(d, lambda b: agent_power_cuts(d, b, cuts=args.agent_cuts, seed=args.seed + 3)),
    )
    if can_mount_tmpfs():
        _run("gateway_disk_full", results, lambda d: _with_broker(d, lambda b: gateway_disk_full(d, b, 200)))
    else:
        results.append({"scenario": "gateway_disk_full", "ok": True, "skipped": "not root: no tmpfs mount"})
    print("== fuzz", flush=True)
    results.append(fuzz(args.fuzz, args.seed, args.atheris_runs))

    faults = [r for r in results if "faults_injected" in r]
    total = {
        k: sum(int(r.get(k, 0)) for r in faults)
        for k in ("faults_injected", "reports_sent", "reports_anchored", "lost", "duplicated")
    }
    storm_lost = sum(int(r.get("lost", 0)) for r in faults if r.get("notes", {}).get("storm"))
    must_hold = all(r.get("ok") for r in results) and total["duplicated"] == 0 and total["lost"] == storm_lost
    summary = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "seed": args.seed,
        "ok": must_hold,
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()},
        "totals": total,
        "lost_in_broker_crash_storm": storm_lost,
        "scenarios": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak-latest.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "Surge soak %s (%.0f s, seed %d): %s"
        % (summary["started"], summary["seconds"], args.seed, "OK" if must_hold else "FAILED"),
        "totals: faults injected %(faults_injected)d, reports sent %(reports_sent)d, anchored "
        "%(reports_anchored)d, lost %(lost)d, duplicated %(duplicated)d" % total,
        "  (of the lost: %d in the broker crash storm, see docs/reliability.md)" % storm_lost,
        "",
    ]
    for r in results:
        if "faults_injected" in r:
            lines.append(
                "%-26s faults %4d  sent %6d  stored %6d  anchored %6d  lost %4d  dup %d  %6.0f s  %s"
                % (
                    r["scenario"],
                    r["faults_injected"],
                    r["reports_sent"],
                    r["reports_stored"],
                    r["reports_anchored"],
                    r["lost"],
                    r["duplicated"],
                    r["seconds"],
                    json.dumps(r.get("notes", {})),
                )
            )
        elif r["scenario"] == "fuzz_mutation":
            lines.append(
                "%-26s inputs %d, crashes %d, accepted %d (signed mutants %d), slowest %.4f s; atheris: %s"
                % (
                    r["scenario"],
                    r["inputs"],
                    r["crashes"],
                    r["accepted"],
                    r["signed_mutants"],
                    r["slowest_input_s"],
                    json.dumps(r["atheris"]),
                )
            )
        else:
            lines.append("%-26s %s" % (r["scenario"], r.get("error") or r.get("skipped")))
    (out / "soak-latest.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if must_hold else 1


if __name__ == "__main__":
    sys.exit(main())
