"""`surge gateway acl` loaded into a real Mosquitto: each device writes only its own topics."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from broker import free_port, mosquitto_binary
from gateway.acl import password_hash
from gw_helpers import Device


def surge(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


class Client:
    def __init__(self, port: int, user: str, password: str) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t-" + user, protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, password)
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, bytes(m.payload)))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def creds(out: Path, user: str) -> str:
    return str(json.loads((out / "credentials" / ("%s.json" % user)).read_text())["password"])


def test_password_hash_format() -> None:
    # Same salt and password give the same entry; the format is mosquitto_passwd's $7$.
    h = password_hash("secret", salt=b"\x00" * 12)
    assert h.startswith("$7$101$AAAAAAAAAAAAAAAA$") and h == password_hash("secret", salt=b"\x00" * 12)


def test_devices_confined_to_their_topics(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    a, b = Device(fleet="alpha"), Device(fleet="alpha")
    for d in (a, b):
        surge(
            "gateway", "enroll", "--db", str(db), "--pubkey", d.key.public.hex(), "--board", "esp32", "--fleet", d.fleet
        )
    out = tmp_path / "acl"
    port = free_port()
    surge("gateway", "acl", "--db", str(db), "--out", str(out), "--port", str(port), "--bind", "127.0.0.1")
    # The generated config as an operator would use it; only `user root` is
    # added because this test runs as root and mosquitto would otherwise switch
    # to its own user, which cannot read the test's temporary directory.
    conf = tmp_path / "test-broker.conf"
    conf.write_text("user root\n" + (out / "surge-broker.conf").read_text())
    broker = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "broker did not start"
                time.sleep(0.05)
        gw = Client(port, "surge-gateway", creds(out, "surge-gateway"))
        gw.c.subscribe("surge/v1/+/+/report", 1)
        bob = Client(port, b.id, creds(out, b.id))
        bob.c.subscribe("surge/v1/alpha/%s/receipt" % b.id, 1)
        bob.c.subscribe("surge/v1/alpha/%s/receipt" % a.id, 1)  # refused by the ACL: never delivered
        alice = Client(port, a.id, creds(out, a.id))
        time.sleep(0.5)
        alice.c.publish("surge/v1/alpha/%s/report" % a.id, b"mine", qos=1).wait_for_publish(5)
        alice.c.publish("surge/v1/alpha/%s/report" % b.id, b"forged", qos=1).wait_for_publish(5)
        gw.c.publish("surge/v1/alpha/%s/receipt" % a.id, b"for-alice", qos=1).wait_for_publish(5)
        gw.c.publish("surge/v1/alpha/%s/receipt" % b.id, b"for-bob", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (gw.got and bob.got):
            time.sleep(0.05)
        time.sleep(0.5)
        assert gw.got == [("surge/v1/alpha/%s/report" % a.id, b"mine")]
        assert bob.got == [("surge/v1/alpha/%s/receipt" % b.id, b"for-bob")]
        # Wrong password: refused outright.
        bad = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bad")
        bad.username_pw_set(a.id, "wrong")
        assert bad.connect("127.0.0.1", port) == 0
        rc: list[int] = []
        bad.on_connect = lambda c, u, f, r, p=None: rc.append(r)
        bad.loop_start()
        deadline = time.monotonic() + 5
        while not rc and time.monotonic() < deadline:
            time.sleep(0.05)
        bad.loop_stop()
        assert rc and rc[0].is_failure
        for c in (gw, bob, alice):
            c.close()
    finally:
        broker.terminate()
        broker.wait(10)
