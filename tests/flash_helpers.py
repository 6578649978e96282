"""Helpers for the `surge flash` tests: the command line, agent configs, a gateway."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from broker import Mosquitto
from gw_helpers import Collector

ROOT = Path(__file__).resolve().parent.parent
WIFI_PASSWORD = "correct-horse-battery-staple"


def surge(
    *args: str, timeout: float = 180, env: dict[str, str] | None = None, drop_dac: bool = False
) -> subprocess.CompletedProcess[str]:
    """`surge ...` with the flash/device commands; `drop_dac` runs it without CAP_DAC_OVERRIDE."""
    cmd = [sys.executable, "-m", "firmware_shim.host.device_cli", *args]
    if drop_dac:
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def surge_popen(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "firmware_shim.host.device_cli", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def agent_config(tmp: Path, broker_url: str, name: str = "dev", interval: float = 2, **extra: Any) -> Path:
    """A config from `surge agent init`, with a short interval and a Wi-Fi password."""
    out = tmp / (name + ".json")
    proc = surge(
        "agent",
        "init",
        "--board",
        "esp32",
        "--broker",
        broker_url,
        "--fleet",
        "demo",
        "--out",
        str(out),
        "--wifi-ssid",
        "maker-lab",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    doc["interval"] = interval
    doc["bw_probe_bytes"] = 0
    doc["wifi"]["password"] = WIFI_PASSWORD
    doc.update(extra)
    out.write_text(json.dumps(doc, indent=2))
    return out


def start_gateway(db: Path, broker: Mosquitto) -> subprocess.Popen[str]:
    log = open(db.with_suffix(".log"), "a")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "gateway",
            "run",
            "--broker",
            broker.url,
            "--db",
            str(db),
            "--batch-size",
            "5",
            "--batch-seconds",
            "1",
            "--confirmations",
            "1",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watch = Collector(broker.port, "surge/v1/_gateway/+/status")
    try:
        ok = watch.wait(lambda: any(p == b"online" for _, p in watch.messages) or proc.poll() is not None, 60)
        assert ok and proc.poll() is None, "gateway did not come online: " + db.with_suffix(".log").read_text()[-2000:]
    finally:
        watch.close()
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def secret_forms(key_file: Path) -> list[bytes]:
    """Every way the device secret could show up in a transcript."""
    doc = json.loads(key_file.read_text())
    secret_hex = doc["secret"]
    secret = bytes.fromhex(secret_hex)
    forms = [secret, secret_hex.encode(), secret_hex.upper().encode(), base64.b64encode(secret)[:40]]
    # Base64 of the key file's text, at each of the three alignments the
    # secret's hex could start on inside a larger base64-encoded chunk.
    for shift in range(3):
        enc = base64.b64encode(b"x" * shift + secret_hex.encode())
        forms.append(enc[4:40])
    return forms


def wait_until(pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())
