"""The gateway's chain key (and its keystore password) never reach its log,
its error output, /metrics or its database, even at debug level and while
things go wrong: bad reports, the chain endpoint going away, a wrong keystore
password, a malformed key."""

from __future__ import annotations

import json
import os
import sys
import subprocess
from pathlib import Path

import pytest

from broker import Mosquitto, free_port
from gateway.chain import ChainKey
from gw_helpers import Device
from gw_process import (
    HARDHAT_KEY_0,
    HARDHAT_KEY_1,
    AckPublisher,
    HardhatNode,
    TcpProxy,
    enroll,
    gateway_log,
    metric_value,
    metrics_text,
    query,
    start_gateway,
    stop,
    wait_for,
    wait_online,
)

PASSWORD = "Tr0ub4dor&3 surge keystore"


# A block every 0.2 s: the gateway under test waits for K confirmations.
pytestmark = pytest.mark.usefixtures("miner")


def spellings(secret: str) -> list[bytes]:
    out = []
    for s in (secret, secret.upper(), "0x" + secret, "0X" + secret.upper()):
        out.append(s.encode())
    out.append(bytes.fromhex(secret))  # raw bytes, for the database file
    return out


def assert_clean(blob: bytes, where: str) -> None:
    for secret in (HARDHAT_KEY_0, HARDHAT_KEY_1):
        for s in spellings(secret):
            assert s not in blob, "chain key found in %s" % where
    assert PASSWORD.encode() not in blob, "keystore password found in %s" % where


@pytest.mark.timeout(240)
def test_chain_key_never_leaks(tmp_path: Path, broker: Mosquitto, node: HardhatNode) -> None:
    db = tmp_path / "gw.db"
    dev = Device()
    enroll(db, dev)
    proxy = TcpProxy(node.port)
    mport = free_port()
    env = dict(os.environ, SURGE_CHAIN_KEY=HARDHAT_KEY_0)
    gw = start_gateway(
        db,
        broker,
        "--chain",
        proxy.url,
        "--metrics-port",
        str(mport),
        "--log-level",
        "debug",
        env=env,
        batch_size=2,
        batch_seconds=0.5,
    )
    pub = AckPublisher(broker.port)
    try:
        wait_online(broker, gw)
        for _ in range(2):
            pub.send(dev.topic, dev.report())
        pub.send(dev.topic, b"\xd2\x84 not a report")
        wait_for(
            lambda: query(db, "SELECT COUNT(*) FROM anchors WHERE state='confirmed'")[0][0] >= 1,
            60,
            "an anchor confirmed",
        )
        proxy.cut()
        for _ in range(2):
            pub.send(dev.topic, dev.report())
        wait_for(lambda: metric_value(metrics_text(mport), "surge_chain_errors_total") >= 3, 30, "chain errors")
        proxy.restore()
        wait_for(
            lambda: query(db, "SELECT COUNT(*) FROM anchors WHERE state='confirmed'")[0][0] >= 2,
            60,
            "anchoring after the outage",
        )
        metrics = metrics_text(mport).encode()
    finally:
        pub.close()
        stop(gw)
        proxy.close()

    # Failing starts: a wrong keystore password, and a key that is almost right.
    keystore = tmp_path / "gateway-key.json"
    keystore.write_text(json.dumps(ChainKey.from_hex(HARDHAT_KEY_1).encrypt(PASSWORD)))
    outputs = []
    for extra, e in (
        (["--keystore", str(keystore)], {"SURGE_KEYSTORE_PASSWORD": "not " + PASSWORD}),
        ([], {"SURGE_CHAIN_KEY": HARDHAT_KEY_1[:-2] + "zz"}),
        ([], {"SURGE_CHAIN_KEY": HARDHAT_KEY_1 + "00"}),
    ):
        env2 = dict(os.environ, **e)
        env2.pop("SURGE_CHAIN_KEY", None) if "SURGE_CHAIN_KEY" not in e else None
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "agent.cli",
                "gateway",
                "run",
                "--broker",
                broker.url,
                "--db",
                str(tmp_path / "other.db"),
                "--chain",
                node.url,
                "--log-level",
                "debug",
                "--duration",
                "1",
                *extra,
            ],
            capture_output=True,
            env=env2,
            timeout=60,
        )
        assert proc.returncode != 0
        outputs.append(proc.stdout + proc.stderr)
    # A working keystore start, for its log and database too.
    env3 = dict(os.environ, SURGE_KEYSTORE_PASSWORD=PASSWORD)
    env3.pop("SURGE_CHAIN_KEY", None)
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "gateway",
            "run",
            "--broker",
            broker.url,
            "--db",
            str(tmp_path / "ks.db"),
            "--chain",
            node.url,
            "--keystore",
            str(keystore),
            "--log-level",
            "debug",
            "--duration",
            "2",
        ],
        capture_output=True,
        env=env3,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]

    log = gateway_log(db).encode()
    assert b"chain unavailable" in log and b"rejected" in log  # the errors did happen
    assert_clean(log, "the gateway log")
    assert_clean(metrics, "/metrics")
    for i, out in enumerate(outputs):
        assert b"error" in out.lower()
        assert_clean(out, "failed start %d" % i)
    assert_clean(ok.stdout + ok.stderr, "the keystore gateway's output")
    for f in list(tmp_path.glob("*.db")) + list(tmp_path.glob("*.db-wal")):
        assert_clean(f.read_bytes(), f.name)
