"""The code examples of docs/integrators.md, run as written against a live fleet."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from broker import Mosquitto
from conftest import ROOT
from gw_helpers import Device, publisher
from test_gateway_e2e import enroll, start_gateway, stop, surge, wait_online


def example(name: str) -> str:
    text = (ROOT / "docs" / "integrators.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        if block.startswith("# example: %s\n" % name):
            return block
    raise AssertionError("no example %r in docs/integrators.md" % name)


def test_subscriber_and_bundle_verifier_examples(tmp_path: Path, broker: Mosquitto) -> None:
    db = tmp_path / "gw.db"
    devs = [Device(fleet="demo"), Device(fleet="demo", board="rpi-5")]
    for d in devs:
        enroll(db, d)
    gw = start_gateway(db, broker)
    wait_online(broker, gw)
    sub_py = tmp_path / "subscriber.py"
    sub_py.write_text(example("subscriber"))
    env = dict(os.environ, SURGE_BROKER_HOST="127.0.0.1", SURGE_BROKER_PORT=str(broker.port), SURGE_FLEET="demo")
    sub = subprocess.Popen([sys.executable, str(sub_py)], env=env, stdout=subprocess.PIPE, text=True)
    pub = publisher(broker.port)
    stop_pub = threading.Event()

    def feed() -> None:
        while not stop_pub.is_set():
            for d in devs:
                pub.publish(d.topic, d.report(), qos=1).wait_for_publish(10)
            time.sleep(0.2)

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        time.sleep(1.0)  # let the subscriber connect before reports flow
        feeder.start()
        out, _ = sub.communicate(timeout=60)
        lines = out.strip().splitlines()
        assert sub.returncode == 0 and len(lines) == 10, out
        assert all(re.match(r"^[0-9a-f]{16} seq ", line) for line in lines), out

        # Wait until something is anchored, then check its bundle with the doc's verifier.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            proc = surge(
                "proof",
                "--db",
                str(db),
                "--device",
                devs[0].id,
                "--boot",
                "1",
                "--seq",
                "0",
                "--out",
                str(tmp_path / "proof.json"),
                check=False,
            )
            if proc.returncode == 0:
                break
            time.sleep(0.5)
        assert proc.returncode == 0, proc.stderr
        verify_py = tmp_path / "verify.py"
        verify_py.write_text(example("verify-bundle"))
        ok = subprocess.run(
            [sys.executable, str(verify_py), str(tmp_path / "proof.json")], capture_output=True, text=True, timeout=60
        )
        assert ok.returncode == 0 and ok.stdout.startswith("VALID"), ok.stdout + ok.stderr
        bundle = (tmp_path / "proof.json").read_text()
        for field in ('"report": "d2', '"root": "', '"gateway_signature": "'):
            at = bundle.index(field) + len(field) + 4
            bad = bundle[:at] + ("0" if bundle[at] != "0" else "1") + bundle[at + 1 :]
            (tmp_path / "bad.json").write_text(bad)
            proc = subprocess.run(
                [sys.executable, str(verify_py), str(tmp_path / "bad.json")], capture_output=True, text=True, timeout=60
            )
            assert proc.returncode != 0, field
    finally:
        stop_pub.set()
        if sub.poll() is None:
            sub.kill()
        pub.loop_stop()
        stop(gw)
