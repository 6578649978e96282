"""Bad probe input on a real broker and a real `surge gateway run`: forged chunks, another device's
nonce, a replayed run, reordered and missing chunks, oversized chunks, an unknown device and a flood.
Each is counted with its reason, the reports that follow them get no measured rate, and ingest carries
on: other devices' reports keep being accepted and attested during the flood."""

from __future__ import annotations

import json
import os
from pathlib import Path

from agent import bwprobe
from broker import Mosquitto, free_port
from gw_helpers import Collector, Device, publisher
from gw_process import enroll, metric_value, metrics_text, query, start_gateway, status, stop, wait_for, wait_online


def chunks(seq: int, total: int = 2048, nonce: bytes | None = None) -> list[bytes]:
    nonce = nonce or os.urandom(16)
    count = (total + bwprobe.CHUNK - 1) // bwprobe.CHUNK
    return [bytes(bwprobe.message(nonce, seq, i, count, total)) for i in range(count)]


def dropped(port: int, reason: str) -> float:
    text = metrics_text(port)
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("surge_probe_chunks_dropped_total{") and 'reason="%s"' % reason in line
    )


def chunks_read(port: int) -> float:
    """Every probe chunk the gateway has read: each is either checked or dropped with a reason."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text(port).splitlines()
        if line.startswith(("surge_probe_chunks_checked_total{", "surge_probe_chunks_dropped_total{"))
    )


def test_bad_probe_input_is_counted_and_never_harms_ingest(tmp_path: Path, broker: Mosquitto) -> None:
    db = tmp_path / "gw.db"
    devs = {name: Device() for name in ("honest", "forger", "borrower", "replayer", "shuffler", "flooder", "bystander")}
    for d in devs.values():
        enroll(db, d)
    port = free_port()
    gw = start_gateway(
        db,
        broker,
        "--metrics-port",
        str(port),
        "--probe-burst",
        "200",
        "--probe-rate",
        "20",
        "--rate-limit",
        "100",
        "--rate-burst",
        "200",
    )
    watch = Collector(broker.port, "surge/v1/+/+/verified")
    pub = publisher(broker.port)

    def probe(d: Device, msgs: list[bytes], wait: bool = True) -> None:
        # Chunks and reports travel on two gateway connections with nothing ordering them; a device's
        # first run counts only if its chunks are read before its report (ProbeCheck.claim), so wait.
        before = chunks_read(port)
        for m in msgs:
            pub.publish("surge/v1/%s/%s/probe" % (d.fleet, d.id), m, qos=0)
        if wait:
            wait_for(lambda: chunks_read(port) >= before + len(msgs), 30, "probe chunks read")

    def report(d: Device) -> None:
        pub.publish(d.topic, d.report(), qos=1).wait_for_publish(10)

    def attested(d: Device) -> list[dict[str, object]]:
        with watch.lock:  # the first `verified` message of each report (the anchored copy comes later)
            docs = [json.loads(p) for t, p in watch.messages if "/%s/" % d.id in t]
        return [v["attested"] for v in docs if v["batch"] is None]

    try:
        wait_online(broker, gw)
        wait_for(lambda: metric_value(metrics_text(port), "surge_probe_connected") == 1, 30, "probe listener up")
        honest, forger, borrower, replayer, shuffler, flooder, bystander = devs.values()

        shared_nonce = os.urandom(16)
        good = chunks(0, nonce=shared_nonce)
        probe(honest, good)
        report(honest)

        forged = chunks(0)
        bad = bytearray(forged[1])
        bad[-3] ^= 0x40
        forged[1] = bytes(bad)
        probe(forger, forged)
        report(forger)

        probe(borrower, chunks(0, nonce=shared_nonce))  # the honest device's nonce, on its own topic
        report(borrower)

        run = chunks(0)
        probe(replayer, run)
        report(replayer)
        probe(replayer, run)  # the same run again, for the next report
        report(replayer)

        c = chunks(0)
        probe(shuffler, [c[0], c[1], c[0], c[2], c[3]])  # one goes back
        report(shuffler)
        c = chunks(1)
        probe(shuffler, [c[0], c[1], c[3]])
        report(shuffler)
        probe(shuffler, [b"\xa0" * 20000])  # over the 16384-byte limit
        probe(Device(), chunks(0))  # a device nobody enrolled

        # The flood: 3000 chunks from one device, while another keeps reporting.
        flood = chunks(0, 16384)
        for _ in range(3000 // len(flood)):
            probe(flooder, flood, wait=False)
        for _ in range(20):
            report(bystander)

        wait_for(
            lambda: len(attested(bystander)) == 20 and len(attested(replayer)) == 2 and len(attested(shuffler)) == 2,
            60,
            "every report attested",
        )
        ok = attested(honest)[0]
        assert ok["bw_up"] and "bw_unverified" not in ok["flags"]  # type: ignore[operator]
        for d in (forger, borrower, replayer, shuffler):
            last = attested(d)[-1]
            assert last["bw_up"] is None and "bw_unverified" in last["flags"], (d.id, last)  # type: ignore[operator]
        assert attested(replayer)[0]["bw_up"]  # the first run was genuine
        assert all(a["bw_up"] is None for a in attested(bystander))  # it sent no runs at all

        runs = dict(query(db, "SELECT device_id || ':' || seq, outcome FROM probe_runs"))
        assert runs["%s:0" % forger.id] == "invalid_chunk"
        assert runs["%s:0" % shuffler.id] == "out_of_order" and runs["%s:1" % shuffler.id] == "missing_chunks"
        # The borrower never had a run of its own; the replayer's second report waited for a run and had none.
        assert "%s:0" % borrower.id not in runs and runs["%s:1" % replayer.id] == "absent"

        wait_for(lambda: dropped(port, "rate_limited") >= 3000 - 200 - 20 * 60, 30, "flood counted")
        for reason in (
            "invalid_chunk",
            "foreign_nonce",
            "replayed",
            "out_of_order",
            "missing_chunks",
            "oversize",
            "unknown_device",
        ):
            assert dropped(port, reason) >= 1, reason
        # The same counts reach the database, for `surge gateway status`.
        wait_for(
            lambda: status(db)["probes"].get("demo", {}).get("chunks", {}).get("rate_limited", 0) > 0,
            10,
            "counts stored",
        )
        st = status(db)
        assert st["reports"]["accepted"] == 1 + 1 + 1 + 2 + 2 + 20 and st["rejections"] == {}
        assert st["probes"]["demo"]["runs"]["invalid_chunk"] >= 1
        assert gw.poll() is None
    finally:
        watch.close()
        pub.loop_stop()
        stop(gw)
