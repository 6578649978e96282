"""Shared pieces of the agent tests (no tests of its own): a paho-mqtt
subscriber that collects everything a device publishes, config and key
set-up, running the real `surge agent run`, and report verification."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from surge_protocol import claims as C
from agent import report
from agent import keyfile
from firmware_shim import cbor, cose

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Msg:
    topic: str
    payload: bytes
    retain: bool


@dataclass
class Subscriber:
    """Persistent-session subscriber: survives a broker restart without losing
    QoS 1 messages queued for it meanwhile."""

    port: int
    fleet: str = "test"
    msgs: list[Msg] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> "Subscriber":
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id="test-sub-%d" % os.getpid(),
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        c.reconnect_delay_set(1, 1)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("surge/v1/%s/#" % self.fleet, qos=1)
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.connect("127.0.0.1", self.port, 30)
        c.loop_start()
        self.client = c
        self.wait(lambda: self.subacks > 0, 10, "subscriber SUBACK")
        return self

    # The test broker keeps no sessions across a restart, so a test that
    # restarts it waits for the subscriber to be back before the device replays.
    subacks: int = 0

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        self.subacks += 1

    def resubscribed(self, before: int) -> None:
        self.wait(lambda: self.subacks > before, 15, "subscriber back after the restart")

    def _on_message(self, client: mqtt.Client, userdata: Any, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.msgs.append(Msg(m.topic, bytes(m.payload), bool(m.retain)))

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def of(self, kind: str) -> list[Msg]:
        with self.lock:
            return [m for m in self.msgs if m.topic.endswith("/" + kind)]

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return
            time.sleep(0.05)
        raise AssertionError("timed out waiting for " + what)


def write_config(
    tmp: Path, port: int, board: str = "linux-generic", name: str = "agent", **over: Any
) -> tuple[Path, keyfile.DeviceKey]:
    key = keyfile.generate()
    keyfile.write(str(tmp / (name + ".key")), key)
    doc: dict[str, Any] = {
        "version": 1,
        "board": board,
        "fleet": "test",
        "broker": {"url": "mqtt://127.0.0.1:%d" % port, "keepalive": 10},
        "interval": 0.3,
        "mounts": ["/"],
        "net_interface": "auto",
        "outbox": {"dir": name + "-outbox", "max_entries": 100},
        "state_dir": name + "-state",
        "key_file": name + ".key",
        "bw_probe_bytes": 2048,
        "reconnect": {"min_s": 0.1, "max_s": 0.5},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(doc.get(k), dict):
            doc[k].update(v)
        else:
            doc[k] = v
    path = tmp / (name + ".json")
    path.write_text(json.dumps(doc))
    return path, key


def agent_cmd(config: Path, count: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "agent.cli", "agent", "run", "--config", str(config)]
    if count is not None:
        cmd += ["--count", str(count)]
    return cmd


def run_agent(config: Path, count: int, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(agent_cmd(config, count), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def start_agent(config: Path, count: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        agent_cmd(config, count), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def verify(data: bytes, public: bytes) -> dict[Any, Any]:
    """Claims of a report or birth whose signature and kid check out."""
    msg = cose.parse_sign1(data)
    assert msg.kid == report.kid(public)
    assert msg.protected == b"\xa2\x01\x27\x04\x48" + report.kid(public)
    assert msg.unprotected == {}
    assert cose.verify_sign1(msg, public), "bad signature"
    claims = cbor.loads(msg.payload)
    assert cbor.dumps(claims) == msg.payload, "payload not in deterministic encoding"
    assert isinstance(claims, dict)
    return claims


def report_chain(msgs: list[Msg], public: bytes) -> list[dict[Any, Any]]:
    """Verified claims of distinct reports in arrival order, deduplicated by
    (boot, seq) like the gateway; checks seq has no gaps and every PREV is
    the hash of the report before it."""
    seen: dict[tuple[int, int], bytes] = {}
    out: list[dict[Any, Any]] = []
    for m in msgs:
        claims = verify(m.payload, public)
        key = (claims[C.BOOTCOUNT], claims[C.SURGE][C.SEQ])
        if key in seen:
            assert seen[key] == m.payload, "two different reports with the same (boot, seq)"
            continue
        seen[key] = m.payload
        claims["_raw"] = m.payload
        out.append(claims)
    seqs = [c[C.SURGE][C.SEQ] for c in out]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "gap or reorder: %s" % seqs
    for before, after in zip(out, out[1:]):
        assert after[C.SURGE][C.PREV] == report.prev_hash(before["_raw"])
    return out
