"""Bench group 8: bandwidth probes checked by the gateway (gateway/probe_check.py).

    python -m bench.run --only 8 [--smoke]      # as part of the bench
    python -m bench.probe_check --ratio N SIZE [--no-nodelay]  # only the honest-agent spread

Figures:
* gateway CPU per probe chunk checked: the probe listener's whole path per
  chunk (MQTT PUBLISH decode, topic, rate limit, CBOR, regenerating and
  comparing the stream, run bookkeeping), for the CPython agent's 512-byte and
  the MicroPython agent's 256-byte chunks;
* probe check rate against the report rate: 4 KB runs (the agent default)
  checked per second on one core, beside reports verified per second by the
  full verify path in the same run;
* the spread of an honest agent's claimed bw_up over the gateway-measured one,
  real agent, Mosquitto and gateway on loopback: what the bw_overclaim
  tolerance (gateway/attest.py) is set against.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEV = "00112233445566aa"


def chunk_cost_us(chunk: int, n: int) -> float:
    """CPU microseconds per chunk through decode + check, best of 3 over ``n`` chunks."""
    from agent import bwprobe
    from gateway.mqtt_codec import Decoder, Publish, encode_publish
    from gateway.probe_check import ProbeTracker
    from gateway.verify import Rejection, parse_topic

    topic = "surge/v1/lab/%s/probe" % DEV
    per_run = 64
    wire = bytearray()
    for r in range(n // per_run):
        nonce = os.urandom(16)
        for i in range(per_run):
            body = (
                bytes(bwprobe.message(nonce, r + 1, i, per_run, per_run * chunk))
                if chunk == bwprobe.CHUNK
                else _message(nonce, r + 1, i, per_run, chunk)
            )
            wire += encode_publish(topic, body, qos=0)
    best = float("inf")
    for _ in range(3):
        tracker = ProbeTracker(rate_per_s=1e9, burst=10**9)
        tracker.add_device(DEV, "lab", 0, 0.0)
        dec = Decoder(v5=True)
        t0 = time.process_time()
        packets = dec.feed(bytes(wire))
        now = time.monotonic()
        for p in packets:
            assert isinstance(p, Publish)
            parsed = parse_topic(p.topic)
            assert not isinstance(parsed, Rejection) and tracker.feed(parsed[1], p.payload, now) is None
        best = min(best, time.process_time() - t0)
        assert len(packets) == (n // per_run) * per_run
    return best / ((n // per_run) * per_run) * 1e6


def _message(nonce: bytes, seq: int, index: int, count: int, size: int) -> bytes:
    import cbor2

    from gateway.probe_check import stream

    return bytes(cbor2.dumps([nonce, seq, index, count, stream(nonce, index, size)]))


def honest_ratios(reports: int, size: int, nodelay: bool = True) -> tuple[list[float], int]:
    """claimed / gateway-measured bw_up of each report of a real agent, and how many had no rate.

    ``nodelay``: Mosquitto with ``set_tcp_nodelay true`` (docs/operators.md).
    Without it the broker's writes to the gateway wait for delayed ACKs (the
    gateway sends nothing back on QoS 0), about 40 ms per run on Linux, and
    a fast run looks several times slower than it was.
    """
    sys.path.insert(0, str(ROOT / "tests"))
    from broker import Mosquitto
    from gw_process import query, start_gateway, stop, surge, wait_for, wait_online
    from test_agent_harness import write_config

    from surge_protocol import claims as C
    from gateway.attest import claims_of

    with tempfile.TemporaryDirectory(prefix="surge-probe-bench-") as tmp_s:
        tmp = Path(tmp_s)
        broker = Mosquitto(tmp / "mosquitto", nodelay=nodelay)
        broker.start()
        db = tmp / "gw.db"
        cfg, key = write_config(tmp, broker.port, bw_probe_bytes=size, interval=0.3)
        surge(
            "gateway",
            "enroll",
            "--db",
            str(db),
            "--pubkey",
            key.public.hex(),
            "--board",
            "linux-generic",
            "--fleet",
            "test",
        )
        gw = start_gateway(db, broker)
        try:
            wait_online(broker, gw)
            proc = subprocess.run(
                [sys.executable, "-m", "agent.cli", "agent", "run", "--config", str(cfg), "--count", str(reports)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert proc.returncode == 0, proc.stderr
            wait_for(lambda: query(db, "SELECT COUNT(*) FROM attestations")[0][0] >= reports, 60, "attestations")
            rows = query(db, "SELECT r.cose, a.bw_up FROM reports r JOIN attestations a ON a.report_id = r.id")
        finally:
            stop(gw)
            broker.stop()
    ratios = [claims_of(bytes(cose))[C.SURGE][C.BW_UP] / bw for cose, bw in rows if bw]
    return ratios, len(rows) - len(ratios)


def group_probe(r: Any, s: Any, work: Path, ctx: dict[str, Any]) -> None:
    from bench import gateway_throughput as gt
    from bench.run import FULL  # not at the top: bench.run imports this module

    full = s is FULL
    n = 16384 if full else 2048
    for chunk, who in ((512, "CPython agent"), (256, "MicroPython agent")):
        r.add(
            "8",
            "Gateway CPU per probe chunk checked, %d B chunks (%s)" % (chunk, who),
            chunk_cost_us(chunk, n),
            "us",
            note="MQTT decode, topic, rate limit, CBOR, stream regenerated and compared, run bookkeeping; "
            "best of 3 over %d chunks, one core" % n,
        )
    per_chunk = chunk_cost_us(512, n)
    runs_per_s = 1e6 / (8 * per_chunk)
    verify_rate = _verify_rate(gt, 2000 if full else 500)
    r.add(
        "8",
        "Probe runs checked/s, one core, 4 KB runs (8 chunks)",
        runs_per_s,
        "runs/s",
        "reports verified/s, full verify path",
        verify_rate,
        "reports/s",
        note="one run per report when every device probes before every report: the ratio is how many "
        "reports' runs one core checks per report it verifies",
    )
    reports = 30 if full else 4
    # Smoke: one short run, to keep `make bench-smoke` inside its time limit.
    for size, nodelay in ((4096, True), (65536, True), (65536, False)) if full else ((4096, True),):
        ratios, unmeasured = honest_ratios(reports, size, nodelay)
        r.add(
            "8",
            "Honest agent claimed/measured bw_up, %d KB runs, loopback%s (median)"
            % (size // 1024, "" if nodelay else ", broker without set_tcp_nodelay"),
            statistics.median(ratios) if ratios else None,
            "x",
            compare=False,
            note="min %.2f max %.2f over %d reports (%d without a rate); bw_overclaim above 4x + 64 KiB/s"
            % (min(ratios, default=0), max(ratios, default=0), len(ratios), unmeasured),
        )


def _verify_rate(gt: Any, n: int) -> float:
    import boards

    from surge_protocol import claims as C
    from gateway.store import Device, DeviceState
    from gateway.verify import Verifier

    messages, publics = gt.presign(n, 20)
    devices = {C.device_id(p): Device(C.device_id(p), p, gt.BOARD, gt.FLEET, "", 0.0, None, None) for p in publics}
    board = boards.load(gt.BOARD)
    states: dict[str, DeviceState] = {}
    verifier = Verifier(devices.get, states.get, lambda *a: None, lambda name: board)
    items = [(t.split("/")[3], p) for t, p in messages]
    now = time.time()
    t0 = time.process_time()
    for dev, data in items:
        out = verifier.verify(dev, data, now)
        states[dev] = DeviceState(out.boot, out.seq, out.report_hash)  # type: ignore[union-attr]
    return n / (time.process_time() - t0)


if __name__ == "__main__":
    if len(sys.argv) in (4, 5) and sys.argv[1] == "--ratio":
        got, none = honest_ratios(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:] != ["--no-nodelay"])
        got.sort()
        print(
            "claimed/measured over %d reports (%d without a rate): min %.2f median %.2f max %.2f"
            % (len(got), none, got[0], statistics.median(got), got[-1])
        )
        print(" ".join("%.2f" % x for x in got))
    else:
        print(__doc__)
