"""Home Assistant MQTT discovery: the real CPython agent through a real Mosquitto.

What Home Assistant reads is checked on the broker, as Home Assistant would
see it: retained discovery configs under ``homeassistant/sensor/...`` (read
by a subscriber that connects after the agent has gone, so only retained
messages can reach it), and a retained state whose figures are those of the
device's last signed report.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from broker import Mosquitto
from paho.mqtt.enums import CallbackAPIVersion
from test_agent_harness import Subscriber, report_chain, run_agent, write_config

from agent import VERSION, hass
from surge_protocol import claims as C
from agent import config as agent_config

SENSORS = {
    "storage_total": ("B", "data_size"),
    "storage_free": ("B", "data_size"),
    "bw_up": ("B/s", "data_rate"),
    "bw_down": ("B/s", "data_rate"),
    "rssi": ("dBm", "signal_strength"),
}


def retained(port: int, topic: str, settle: float = 1.0) -> dict[str, tuple[bytes, bool]]:
    """Everything a fresh subscriber gets on ``topic`` at once: the retained messages."""
    got: dict[str, tuple[bytes, bool]] = {}
    lock = threading.Lock()

    def on_message(c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        with lock:
            got[m.topic] = (bytes(m.payload), bool(m.retain))

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hass-look-%d" % time.monotonic_ns())
    c.on_message = on_message
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, 1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    time.sleep(settle)
    c.loop_stop()
    c.disconnect()
    with lock:
        return dict(got)


def test_discovery_configs_and_state_follow_the_signed_report(broker: Mosquitto, tmp_path: Path) -> None:
    cfg, key = write_config(tmp_path, broker.port, board="rpi-4", hass=True, bw_probe_bytes=1024)
    dev = key.device_id
    base = "surge/v1/test/%s/" % dev
    sub = Subscriber(broker.port).start()
    try:
        proc = run_agent(cfg, 3)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        sub.wait(lambda: len(sub.of("state")) >= 3, 10, "3 state messages")
    finally:
        sub.stop()

    # One retained state after each report, carrying that report's own figures.
    chain = report_chain(sub.of("report"), key.public)
    states = [json.loads(m.payload) for m in sub.of("state")]
    assert [s["seq"] for s in states] == [1, 2, 3]
    for st, claims in zip(states, chain):
        s = claims[C.SURGE]
        assert st["storage_total"] == s[C.STORAGE_TOTAL] and st["storage_free"] == s[C.STORAGE_FREE]
        assert st["bw_up"] == s[C.BW_UP] > 0
        assert st["boot"] == claims[C.BOOTCOUNT] and st["iat"] == claims[C.IAT]
        # What the agent cannot measure is null, which Home Assistant shows as "unknown".
        assert st["bw_down"] is None

    # A Home Assistant that connects later finds everything it needs, retained.
    found = retained(broker.port, "homeassistant/#")
    assert sorted(found) == sorted("homeassistant/sensor/%s/%s/config" % (dev, k) for k in SENSORS)
    unique_ids = set()
    for sensor, (unit, device_class) in SENSORS.items():
        payload, was_retained = found["homeassistant/sensor/%s/%s/config" % (dev, sensor)]
        assert was_retained
        doc = json.loads(payload)
        assert doc["state_topic"] == base + "state"
        assert doc["value_template"] == "{{ value_json.%s }}" % sensor
        assert doc["unit_of_measurement"] == unit and doc["device_class"] == device_class
        assert doc["state_class"] == "measurement"
        assert doc["availability_topic"] == base + "status"
        assert (doc["payload_available"], doc["payload_not_available"]) == ("online", "offline")
        assert doc["device"] == {
            "identifiers": ["surge_" + dev],
            "name": "Surge " + dev,
            "manufacturer": "Surge",
            "model": "rpi-4",
            "sw_version": VERSION,
        }
        unique_ids.add(doc["unique_id"])
    assert len(unique_ids) == len(SENSORS)
    assert json.loads(found["homeassistant/sensor/%s/rssi/config" % dev][0])["entity_category"] == "diagnostic"

    # The state and the availability it points at are retained too: the last
    # report's figures, and "offline" since the agent stopped cleanly.
    look = retained(broker.port, base + "+")
    assert look[base + "state"][1] and json.loads(look[base + "state"][0]) == states[-1]
    assert look[base + "status"] == (b"offline", True)


def test_off_by_default(broker: Mosquitto, tmp_path: Path) -> None:
    cfg, _ = write_config(tmp_path, broker.port, bw_probe_bytes=0)
    proc = run_agent(cfg, 1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert retained(broker.port, "homeassistant/#", 0.5) == {}
    assert not [t for t in retained(broker.port, "surge/v1/#", 0.5) if t.endswith("/state")]


def test_discovery_payloads_by_hand() -> None:
    msgs = dict(hass.discovery("f1", "0011223344556677", "esp32", "9.9"))
    doc = json.loads(msgs["homeassistant/sensor/0011223344556677/storage_free/config"])
    assert doc["unique_id"] == "surge_0011223344556677_storage_free"
    assert doc["state_topic"] == "surge/v1/f1/0011223344556677/state"
    assert doc["availability_topic"] == "surge/v1/f1/0011223344556677/status"
    assert doc["device"]["sw_version"] == "9.9" and doc["device"]["model"] == "esp32"


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_config_option_must_be_a_bool(tmp_path: Path, value: Any) -> None:
    cfg, _ = write_config(tmp_path, 1883, hass=value)
    with pytest.raises(agent_config.ConfigError, match="field 'hass' must be true or false"):
        agent_config.load(str(cfg))
