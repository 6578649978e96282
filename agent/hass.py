"""Home Assistant MQTT discovery for the agent (CPython; opt-in with ``"hass": true``).

On every connect the agent publishes one retained discovery config per
sensor under ``homeassistant/sensor/<device>/<sensor>/config``; Home
Assistant then shows the device with its storage, bandwidth and signal
sensors, available while the device's retained status says ``online``.
After each report it publishes a small retained JSON state on
``surge/v1/<fleet>/<device>/state`` with the figures of that signed report,
so what Home Assistant shows is exactly what the device signed.

Nothing here is part of the signed protocol: the gateway never reads these
topics, and a device without the option publishes nothing under them.
Boards (MicroPython) leave this module out of their bundle to save heap;
the option is for agents on a Raspberry Pi or any Linux machine.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Protocol

from agent import VERSION
from surge_protocol import claims as C
from surge_protocol import topics

PREFIX = "homeassistant"  # Home Assistant's default discovery prefix

# (state key, name, unit, device class, extra config)
SENSORS: tuple[tuple[str, str, str, str, dict[str, str]], ...] = (
    ("storage_total", "Storage total", "B", "data_size", {}),
    ("storage_free", "Storage free", "B", "data_size", {}),
    ("bw_up", "Bandwidth up", "B/s", "data_rate", {}),
    ("bw_down", "Bandwidth down", "B/s", "data_rate", {}),
    ("rssi", "Wi-Fi signal", "dBm", "signal_strength", {"entity_category": "diagnostic"}),
)
STATE_FIELDS = ("storage_total", "storage_free", "bw_up", "bw_down", "rssi", "link_mbps", "net_rx", "net_tx")


class _Outbox(Protocol):
    def newest(self) -> tuple[int, bytes] | None: ...


class _Config(Protocol):
    def get(self, key: str) -> Any: ...


class AgentLike(Protocol):
    """What this module uses of agent.runner.Agent."""

    cfg: _Config
    link: Any
    device: str
    outbox: _Outbox
    log: Callable[[str], None]

    def topic(self, kind: str) -> str: ...

    def cycle(self) -> None: ...


def discovery_topic(device: str, sensor: str, prefix: str = PREFIX) -> str:
    return "%s/sensor/%s/%s/config" % (prefix, device, sensor)


def discovery(fleet: str, device: str, board: str, sw_version: str = VERSION) -> list[tuple[str, bytes]]:
    """(topic, retained JSON payload) of every sensor's discovery config."""
    base = topics.device_base(fleet, device)
    dev = {
        "identifiers": ["surge_" + device],
        "name": "Surge %s" % device,
        "manufacturer": "Surge",
        "model": board,
        "sw_version": sw_version,
    }
    out = []
    for key, name, unit, device_class, extra in SENSORS:
        doc: dict[str, Any] = {
            "name": name,
            "unique_id": "surge_%s_%s" % (device, key),
            "state_topic": base + "state",
            # A figure the report lacks is JSON null, which Home Assistant shows as "unknown".
            "value_template": "{{ value_json.%s }}" % key,
            "unit_of_measurement": unit,
            "device_class": device_class,
            "state_class": "measurement",
            "availability_topic": base + "status",
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": dev,
            "origin": {"name": "surge-agent", "sw_version": sw_version},
        }
        doc.update(extra)
        out.append((discovery_topic(device, key), json.dumps(doc, separators=(",", ":")).encode()))
    return out


def state(report: bytes) -> bytes:
    """The retained state JSON: the figures of one signed report, by claim name."""
    from firmware_shim import cbor, cose

    named = C.named(cbor.loads(cose.parse_sign1(report).payload))  # type: ignore[no-untyped-call]
    doc: dict[str, Any] = {k: named.get(k) for k in STATE_FIELDS}
    doc.update(seq=named.get("seq"), boot=named.get("bootcount"), iat=named.get("iat"))
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def publish_state(agent: AgentLike) -> None:
    newest = agent.outbox.newest()
    if newest is None or not agent.link.connected:
        return  # the next report after reconnecting brings the state up to date
    agent.link.publish(agent.topic("state"), state(newest[1]), 1, True)


def attach(agent: AgentLike) -> None:
    """Publish the discovery configs; from now on, a state after each report.

    Called by the agent right after each successful connect.  The state
    hook wraps ``cycle`` on this agent object once, so the portable run loop
    (shared with the boards) needs only this one call.
    """
    for topic, payload in discovery(agent.cfg.get("fleet"), agent.device, agent.cfg.get("board")):
        agent.link.publish(topic, payload, 1, True)
    if getattr(agent, "_hass_cycle", None) is None:
        cycle = agent.cycle

        def cycle_then_state() -> None:
            cycle()
            try:
                publish_state(agent)
            except Exception as exc:  # a lost connection is noticed (and logged) by the run loop
                agent.log("home assistant state not sent: %s" % type(exc).__name__)

        setattr(agent, "_hass_cycle", cycle)
        setattr(agent, "cycle", cycle_then_state)
