"""One device flooding the gateway cannot starve the fleet: its messages are
refused `rate_limited` (or `oversize`) before any parsing or signature check,
counted in `surge gateway status` and on /metrics, while every report of the
well-behaved devices, sent during the flood, is accepted."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from broker import Mosquitto, free_port
from gw_helpers import Device, publisher
from gw_process import (
    AckPublisher,
    enroll,
    gateway_log,
    metric_value,
    metrics_text,
    query,
    start_gateway,
    status,
    stop,
    wait_for,
    wait_online,
)

FLOOD = 3000
BURST = 20


@pytest.mark.timeout(180)
def test_flooding_device_cannot_starve_the_fleet(tmp_path: Path, broker: Mosquitto) -> None:
    db = tmp_path / "gw.db"
    flooder = Device(board="rpi-4")
    fleet = [Device(board="rpi-4") for _ in range(6)]
    for d in [flooder] + fleet:
        enroll(db, d)
    mport = free_port()
    gw = start_gateway(
        db,
        broker,
        "--metrics-port",
        str(mport),
        "--rate-limit",
        "2",
        "--rate-burst",
        str(BURST),
        batch_size=1000,
        batch_seconds=3600,
    )
    flood_pub = publisher(broker.port)
    pub = AckPublisher(broker.port)
    try:
        wait_online(broker, gw)
        # Pre-signed flood: genuine reports with fresh seqs, plus oversize ones, fired without
        # waiting for acknowledgements.
        big = flooder.report(errors={"storage": "x" * 1100})
        flood = [flooder.report() for _ in range(FLOOD)]
        started = threading.Event()

        def fire() -> None:
            for i, data in enumerate(flood):
                flood_pub.publish(flooder.topic, big if i % 10 == 0 else data, qos=1)
                if i == 200:
                    started.set()
            started.set()

        t = threading.Thread(target=fire, daemon=True)
        t.start()
        started.wait(30)
        honest: list[bytes] = []
        for _ in range(BURST // 2):  # within each device's own budget
            for d in fleet:
                data = d.report()
                pub.send(d.topic, data)
                honest.append(data)
        t.join(60)

        def fleet_stored() -> int:
            return sum(query(db, "SELECT COUNT(*) FROM reports WHERE device_id=?", (d.id,))[0][0] for d in fleet)

        wait_for(lambda: fleet_stored() == len(honest), 60, "every fleet report accepted")
        wait_for(
            lambda: (
                sum(status(db)["rejections"].values())
                + query(db, "SELECT COUNT(*) FROM reports WHERE device_id=?", (flooder.id,))[0][0]
                >= FLOOD
            ),
            60,
            "the whole flood processed",
        )
        for data in honest:
            assert query(db, "SELECT 1 FROM reports WHERE cose=?", (data,)), "a fleet report was lost"
        st = status(db)
        flood_accepted = query(db, "SELECT COUNT(*) FROM reports WHERE device_id=?", (flooder.id,))[0][0]
        rej = st["rejections"]
        # The flooder got its burst and a trickle, nothing like its flood.
        assert flood_accepted < FLOOD // 10, flood_accepted
        assert rej.get("rate_limited", 0) > FLOOD // 2
        assert rej.get("oversize", 0) >= 1
        assert set(rej) <= {"rate_limited", "oversize", "replay"}, rej
        text = metrics_text(mport)
        assert metric_value(text, 'surge_reports_rejected_total{reason="rate_limited"}') == rej["rate_limited"]
        assert metric_value(text, 'surge_reports_rejected_total{reason="oversize"}') == rej["oversize"]
        assert metric_value(text, "surge_reports_accepted_total") == len(honest) + flood_accepted
        # Nobody is told about rate-limited messages (that would amplify the flood), and the
        # log does not grow by a line per refused message either.
        assert gw.poll() is None
        assert gateway_log(db).count("rate_limited") < 10
    finally:
        flood_pub.loop_stop()
        pub.close()
        stop(gw)


@pytest.mark.timeout(120)
def test_anchoring_backlog_is_reported_with_its_remedy(tmp_path: Path, broker: Mosquitto) -> None:
    # Batches of at most one report, and more confirmations than the in-process
    # chain makes in the test's time: closed batches queue behind the one in flight.
    db = tmp_path / "gw.db"
    dev = Device(board="rpi-4")
    enroll(db, dev)
    gw = start_gateway(db, broker, "--batch-max", "1", batch_size=1, batch_seconds=3600, confirmations=100000)
    pub = AckPublisher(broker.port)
    try:
        wait_online(broker, gw)
        for _ in range(12):
            pub.send(dev.topic, dev.report())
        wait_for(lambda: "anchoring falls behind" in gateway_log(db), 30, "the backlog warning")
        line = next(x for x in gateway_log(db).splitlines() if "anchoring falls behind" in x)
        assert "batch_max = 1 reports" in line and "raise batch_max" in line and "100000 confirmations" in line
        assert gateway_log(db).count("anchoring falls behind") == 1  # once per episode
        assert gw.poll() is None
    finally:
        pub.close()
        stop(gw)
