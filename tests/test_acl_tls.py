"""`surge gateway acl` with TLS, loaded into a real Mosquitto: a CA and a server
certificate are made here with `cryptography`; devices, the gateway
(`surge gateway run --broker mqtts://... --broker-ca`), the integrator account
and a `surge agent run` agent all connect over TLS with their generated
credentials, and the ACL confines each to its own topics.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from broker import free_port, mosquitto_binary
from gw_helpers import Device
from gw_process import query, stop, surge, wait_for


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost, signed by it."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("surge test CA"))
        .issuer_name(_name("surge test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    d.mkdir(parents=True, exist_ok=True)
    paths = (d / "ca.crt", d / "broker.crt", d / "broker.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths[2].chmod(0o600)
    return paths


class TLSClient:
    def __init__(self, port: int, ca: Path, user: str, password: str) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.rc: list[Any] = []
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="t-%s-%d" % (user, time.monotonic_ns()), protocol=mqtt.MQTTv311
        )
        self.c.username_pw_set(user, password)
        self.c.tls_set(ca_certs=str(ca))
        self.c.on_message = self._msg
        self.c.on_connect = self._conn
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _conn(self, c: Any, u: Any, f: Any, rc: Any, p: Any = None) -> None:
        self.rc.append(rc)
        if not rc.is_failure:
            self.connected.set()

    def _msg(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append((m.topic, bytes(m.payload)))

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(topic, 1)
        assert done.wait(10)

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def creds(out: Path, user: str) -> str:
    return str(json.loads((out / "credentials" / ("%s.json" % user)).read_text())["password"])


@pytest.mark.timeout(180)
def test_acl_over_tls_devices_gateway_integrator_agent(tmp_path: Path) -> None:
    from agent import keyfile
    from test_agent_harness import run_agent, write_config

    ca, cert, key = make_pki(tmp_path / "pki")
    db = tmp_path / "gw.db"
    a, b = Device(fleet="alpha"), Device(fleet="alpha")
    for d in (a, b):
        surge(
            "gateway", "enroll", "--db", str(db), "--pubkey", d.key.public.hex(), "--board", "esp32", "--fleet", d.fleet
        )
    # A `surge agent run` device, enrolled from its key file.
    port = free_port()
    agent_cfg, agent_key = write_config(tmp_path, port, bw_probe_bytes=0, fleet="alpha")
    surge(
        "gateway",
        "enroll",
        "--db",
        str(db),
        "--key-file",
        str(tmp_path / "agent.key"),
        "--board",
        "linux-generic",
        "--fleet",
        "alpha",
    )
    out = tmp_path / "acl"
    surge(
        "gateway",
        "acl",
        "--db",
        str(db),
        "--out",
        str(out),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--cafile",
        str(ca),
        "--certfile",
        str(cert),
        "--keyfile",
        str(key),
    )
    conf_text = (out / "surge-broker.conf").read_text()
    assert "cafile %s" % ca in conf_text and "allow_anonymous false" in conf_text
    assert "set_tcp_nodelay true" in conf_text.splitlines()  # probe timing (docs/operators.md)
    conf = tmp_path / "broker.conf"
    # The generated file as is; `user root` only because the test runs as root and Mosquitto
    # would otherwise switch to its own user, which cannot read the test's directory.
    conf.write_text("user root\nlog_dest file %s\n" % (tmp_path / "mosquitto.log") + conf_text)
    broker = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    clients: list[TLSClient] = []
    gw = None
    try:
        wait_for(lambda: _listening(port), 10, "the TLS listener")
        # Plain MQTT on the TLS port gets nowhere, and a client that does not trust the CA neither.
        with pytest.raises((ssl.SSLError, OSError)):
            ctx = ssl.create_default_context()
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                ctx.wrap_socket(s, server_hostname="localhost").close()

        integ = TLSClient(port, ca, "surge-integrator", creds(out, "surge-integrator"))
        alice = TLSClient(port, ca, a.id, creds(out, a.id))
        bob = TLSClient(port, ca, b.id, creds(out, b.id))
        clients += [integ, alice, bob]
        for c in clients:
            assert c.connected.wait(10), c.rc
        # Alice tries to read Bob's receipts and commands (and everything): the broker delivers none of them.
        alice.subscribe("surge/v1/alpha/%s/receipt" % b.id)
        alice.subscribe("surge/v1/alpha/%s/cmd" % b.id)
        alice.subscribe("surge/v1/#")
        bob.subscribe("surge/v1/alpha/%s/receipt" % b.id)
        integ.subscribe("surge/v1/+/+/verified")
        integ.subscribe("surge/v1/+/+/receipt")  # not the integrator's to read

        # The gateway over TLS with its generated account.
        pwfile = tmp_path / "gw-password"
        pwfile.write_text(creds(out, "surge-gateway") + "\n")
        pwfile.chmod(0o600)
        log = open(tmp_path / "gw.log", "w")
        gw = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent.cli",
                "gateway",
                "run",
                "--broker",
                "mqtts://localhost:%d" % port,
                "--broker-ca",
                str(ca),
                "--username",
                "surge-gateway",
                "--password-file",
                str(pwfile),
                "--db",
                str(db),
                "--batch-size",
                "100",
                "--batch-seconds",
                "0.5",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_for(
            lambda: "connected to localhost" in (tmp_path / "gw.log").read_text() or gw.poll() is not None,
            30,
            "the gateway to connect over TLS",
        )
        assert gw.poll() is None, (tmp_path / "gw.log").read_text()
        time.sleep(1.0)  # its subscriptions are in place

        def stored(data: bytes) -> bool:
            return bool(query(db, "SELECT 1 FROM reports WHERE cose=?", (data,)))

        # Alice publishes her own report (accepted) and one under Bob's topic, signed with Bob's
        # kid by her own key: the broker drops it before the gateway could even see it.
        mine = a.report()
        alice.publish(a.topic, mine)
        forged = b.report()  # genuinely Bob's bytes, replayed by Alice: still not her topic
        alice.publish(b.topic, forged)
        alice.publish("surge/v1/alpha/%s/status" % b.id, b"offline")
        wait_for(lambda: stored(mine), 30, "Alice's own report accepted")
        honest = b.report()
        bob.publish(b.topic, honest)
        wait_for(lambda: stored(honest), 30, "Bob's own report accepted")
        assert not stored(forged), "a report Alice published on Bob's topic reached the gateway"
        assert query(db, "SELECT COUNT(*) FROM rejections") == [(0,)]

        # Receipts: the gateway may write them (a rejected one for Bob, provoked by Bob himself).
        bob.publish(b.topic, b"\xd2\x84garbage")
        wait_for(lambda: any(t.endswith("/%s/receipt" % b.id) for t, _ in bob.got), 30, "Bob's receipt")
        wait_for(
            lambda: len([1 for t, _ in integ.got if t.endswith("/verified")]) >= 2,
            30,
            "verified JSON for the integrator",
        )
        time.sleep(0.5)
        # Alice saw nothing of Bob's: not his receipts, not his reports, not verified data.
        assert [t for t, _ in alice.got if b.id in t] == [], alice.got
        assert all(t.endswith("/verified") for t, _ in integ.got), integ.got
        # The integrator account only reads: its publish on a report topic never arrives.
        integ.publish(a.topic, a.report(seq=a.seq))
        time.sleep(0.5)
        assert query(db, "SELECT COUNT(*) FROM reports WHERE device_id=?", (a.id,)) == [(1,)]

        # The agent over TLS with its config: broker.tls, ca_file, username = device id.
        doc = json.loads(agent_cfg.read_text())
        doc["broker"].update(
            {
                "url": "mqtts://localhost:%d" % port,
                "ca_file": str(ca),
                "username": agent_key.device_id,
                "password": creds(out, agent_key.device_id),
            }
        )
        agent_cfg.write_text(json.dumps(doc))
        done = run_agent(agent_cfg, 3, timeout=90)
        assert done.returncode == 0, done.stdout + done.stderr
        wait_for(
            lambda: query(db, "SELECT COUNT(*) FROM reports WHERE device_id=?", (agent_key.device_id,)) == [(3,)],
            30,
            "the agent's reports over TLS",
        )
        assert keyfile.load(str(tmp_path / "agent.key")).device_id == agent_key.device_id
        assert gw.poll() is None
    finally:
        for c in clients:
            c.close()
        if gw is not None:
            stop(gw)
        broker.terminate()
        broker.wait(10)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False
