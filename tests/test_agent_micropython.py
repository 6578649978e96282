"""The esp32 firmware bundle on the real MicroPython unix port, through a real broker."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from surge_protocol import claims as C
from agent.cli import main as surge
from test_agent_harness import Subscriber, report_chain, verify, write_config

# The targets: the esp32 bundle completes full cycles in a 64K heap
# from .py and in a 48K heap from .mpy, on the 64-bit unix port (which needs
# more heap than a 32-bit board: bigger pointers and ints).  The smallest
# heaps, from `python -m tests.portable.heap_bisect [--mpy] [--first-start]`:
# 46-47K from .mpy, also on a first start (key made on the device); 61-62K
# from .py, 62K on a first start from .py.  Measured again on 2026-12-03, after
# issue 12's probe and storage code: 47K from .mpy, 64K from .py (no margin left);
# after the MQTT shim's publish lost its payload copy: 47K and 63K; after
# SHA-512 streamed parts and signing stopped joining the message: 46K from .mpy
# (firmware_shim.sha512 loaded: ~2.1 KB, was 3.1).  On 2026-12-08, with the
# bundle run from its own root (board_argv): 44-45K from .mpy, 61-62K from .py,
# over three reports with this file's config; from a ~100-character host path
# instead, 45-47K and 62-64K, which is how CI's paths failed at 64K from .py.
# Where the 48K goes, from .mpy (gc.mem_free/micropython.mem_info in the run
# loop): the loaded run-loop modules take ~36 KB (firmware_shim.ed25519 5.2,
# firmware_shim.mqtt 5.1, agent.config 3.8, firmware_shim.sha512 3.1,
# agent.runner 3.1, agent.link 2.8, agent.session 2.7, agent.cycle 2.1 ...),
# an idle agent has ~5.8-6.0 KB free, and signing one report needs ~5-6 KB
# free even on an unfragmented heap: signing is the limit, then the probe's
# chunk (~280 bytes) and the shim's header+payload copy (~320 bytes).  From
# .py the margin is nil the other way: any line added to a run-loop module
# makes the start fail at 64K compiling agent.bwprobe (the last one, with
# ~12.6 KB free in pieces, for want of one 592-byte block).
HEAP_PY = "64K"
HEAP_MPY = "48K"


def _build(tmp: Path, port: int, *extra: str, **over: Any) -> Path:
    cfg, _ = write_config(
        tmp, port, board="esp32", name="esp", mounts=["/"], net_interface="sta", bw_probe_bytes=1024, **over
    )
    out = tmp / "bundle"
    assert surge(["firmware", "build", "--board", "esp32", "--config", str(cfg), "--out", str(out), *extra]) == 0
    return out


def board_env() -> dict[str, str]:
    # MICROPYPATH without the repository: the bundle must bring everything.
    return dict(os.environ, MICROPYPATH=".frozen")


def board_argv(micropython: str, heap: str, *args: str) -> list[str]:
    """Run a bundle as a board does, from its own root (cwd = the bundle): module
    paths are then "agent/x.py" whatever the host's temporary directory, as short
    as a board's "/agent/x.py".  Each module keeps its path, so a long host path
    cost ~1-2 KB of heap and made the smallest heap depend on where the test ran."""
    return [micropython, "-X", "heapsize=" + heap, "main.py", *args]


def _run(micropython: str, bundle: Path, heap: str, count: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        board_argv(micropython, heap, "--count", str(count)),
        cwd=bundle,
        env=board_env(),
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_bundle_holds_only_device_modules(tmp_path: Path) -> None:
    out = _build(tmp_path, 1883)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert "main.py" in files and "config.json" in files and "firmware_shim/mqtt.py" in files
    for host_only in (
        "agent/cli.py",
        "agent/agent_cli.py",
        "agent/link_paho.py",
        "agent/keyfile.py",
        "firmware_shim/host/bundle.py",
        "firmware_shim/cbor.py",
    ):
        assert host_only not in files
    assert not any(f.endswith(".key") for f in files), "host secret copied into the bundle"
    doc = json.loads((out / "config.json").read_text())
    assert doc["key_file"] == "esp.key" and doc["outbox"]["dir"] == "outbox"
    # A CPython board has no bundle; a config for another board is refused.
    assert (
        surge(
            [
                "firmware",
                "build",
                "--board",
                "rpi-4",
                "--config",
                str(tmp_path / "esp.json"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert (
        surge(
            [
                "firmware",
                "build",
                "--board",
                "esp32-s3",
                "--config",
                str(tmp_path / "esp.json"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )


def _host_key(tmp: Path) -> tuple[Path, Any]:
    from agent import keyfile

    path = tmp / "demo.key"
    key = keyfile.generate()
    keyfile.write(str(path), key)
    return path, key


def test_esp32_bundle_publishes_verifiable_reports(broker: Any, tmp_path: Path, micropython: str) -> None:
    host_key, key = _host_key(tmp_path)
    bundle = _build(tmp_path, broker.port, "--with-key", str(host_key))
    sub = Subscriber(broker.port).start()
    try:
        proc = _run(micropython, bundle, HEAP_PY, 3)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        sub.wait(lambda: len(sub.of("report")) >= 3, 10, "3 reports")
    finally:
        sub.stop()
    assert "public key" not in proc.stdout  # the given key was used, none generated
    birth = verify(sub.of("birth")[0].payload, key.public)
    assert birth[C.HWMODEL] == b"esp32" and birth[C.SURGE][C.RUNTIME] == "micropython"
    chain = report_chain(sub.of("report"), key.public)
    assert [c[C.SURGE][C.SEQ] for c in chain] == [1, 2, 3]
    s = chain[-1][C.SURGE]
    assert s[C.STORAGE_TOTAL] > 0 and s[C.BW_UP] > 0
    assert s[C.ERRORS] == {"net": "no interface sta", "link": "no link speed or rssi for sta"}
    assert [m.payload for m in sub.of("status")] == [b"online", b"offline"]


def test_esp32_mpy_bundle_first_start_makes_its_key(broker: Any, tmp_path: Path, micropython: str) -> None:
    # The first start from .mpy, in the 48K target heap: the key code and
    # Ed25519 are loaded, used and unloaded before the run loop's modules
    # (tests/portable/heap_bisect.py --mpy --first-start).
    bundle = _build(tmp_path, broker.port, "--mpy")
    assert (bundle / "agent" / "runner.mpy").exists() and not (bundle / "agent" / "runner.py").exists()
    sub = Subscriber(broker.port).start()
    try:
        proc = _run(micropython, bundle, HEAP_MPY, 2)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        sub.wait(lambda: len(sub.of("report")) >= 2, 10, "2 reports")
    finally:
        sub.stop()
    # The device made its key and printed only the public half.
    m = re.search(r"public key: ([0-9a-f]{64})", proc.stdout)
    assert m, proc.stdout
    public = bytes.fromhex(m.group(1))
    secret = json.loads((bundle / "esp.key").read_text())["secret"]
    assert secret not in proc.stdout
    verify(sub.of("birth")[0].payload, public)
    assert len(report_chain(sub.of("report"), public)) == 2


def test_esp32_mpy_bundle_delivers_a_full_outbox_in_48k(broker: Any, tmp_path: Path, micropython: str) -> None:
    # A board that was offline for hours starts with its outbox (500 by
    # default) all but full: it must still fit the 48K heap and send every
    # report, oldest first, then carry on the chain. Before the outbox kept runs
    # of seqs instead of every file name and seq, 100 queued reports crashed
    # the start-up; and a MemoryError while reading a queued report ended the
    # run loop (session.flush now leaves it queued and tries again).
    from agent import report

    host_key, key = _host_key(tmp_path)
    bundle = _build(
        tmp_path, broker.port, "--mpy", "--with-key", str(host_key), outbox={"dir": "outbox", "max_entries": 500}
    )
    outbox = bundle / "outbox"
    outbox.mkdir()
    prev = None
    for seq in range(1, 500):
        data = report.sign_report(
            key.secret, key.public, report.build_claims(seq=seq, bootcount=1, uptime=seq, interval=60, prev=prev)
        )
        (outbox / ("%016d.rep" % seq)).write_bytes(data)
        prev = C.prev_hash(data)
    sub = Subscriber(broker.port).start()
    try:
        proc = _run(micropython, bundle, HEAP_MPY, 1)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "499 queued" in proc.stdout
        sub.wait(lambda: len(sub.of("report")) >= 500, 30, "500 reports")
    finally:
        sub.stop()
    chain = report_chain(sub.of("report"), key.public)
    assert [c[C.SURGE][C.SEQ] for c in chain] == list(range(1, 501))
    assert not list(outbox.iterdir())


@pytest.mark.parametrize("field,value", [("interval", 0), ("fleet", "a/b")])
def test_bad_config_on_device_names_the_field(tmp_path: Path, micropython: str, field: str, value: Any) -> None:
    bundle = _build(tmp_path, 1883)
    doc = json.loads((bundle / "config.json").read_text())
    doc[field] = value
    (bundle / "config.json").write_text(json.dumps(doc))
    proc = _run(micropython, bundle, HEAP_PY, 1)
    assert proc.returncode == 2
    assert "field '%s' must be" % field in proc.stdout
