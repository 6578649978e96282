"""surge_protocol.ids and .topics: one definition, agreed on by every copy and by MicroPython."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent import report
from conftest import MicroRun
from firmware_shim.host import flash
from surge_protocol import claims, ids, topics

KEYS = [bytes(32), bytes(range(32)), hashlib.sha256(b"surge").digest()]


@pytest.mark.parametrize("public", KEYS)
def test_identity_matches_its_definition(public: bytes) -> None:
    digest = hashlib.sha256(public).digest()
    assert ids.kid(public) == digest[:8]
    assert ids.device_id(public) == digest[:8].hex()
    assert ids.device_id(bytearray(public)) == digest[:8].hex()
    assert ids.prev_hash(public) == digest[:16]
    # The host paths import it; agent.report keeps its own copy so the 64 KB
    # device heap does not pay for another package: the copies must agree.
    assert claims.device_id(public) == flash.device_id(public) == ids.device_id(public)
    assert report.kid(public) == ids.kid(public) and report.device_id(public) == ids.device_id(public)
    assert report.prev_hash(public) == ids.prev_hash(public)


def test_topic_tree() -> None:
    t = topics.topic("demo", "00112233aabbccdd", "report")
    assert t == "surge/v1/demo/00112233aabbccdd/report"
    assert topics.parse(t) == ("demo", "00112233aabbccdd", "report")
    assert topics.device_base("demo", "ab") + "receipt" == topics.topic("demo", "ab", "receipt")
    assert topics.batches("demo") == topics.fleet_base("demo") + "batches" == "surge/v1/demo/batches"
    assert topics.gateway_topic("gw1", "status") == "surge/v1/_gateway/gw1/status"
    assert topics.every_device("probe") == "surge/v1/+/+/probe"
    assert topics.every_fleet_batches() == "surge/v1/+/batches"
    assert topics.every_gateway() == "surge/v1/_gateway/#"


@pytest.mark.parametrize(
    "bad", ["surge/v2/demo/ab/report", "surge/v1/demo/ab", "surge/v1/demo/ab/report/x", "other/v1/demo/ab/report", ""]
)
def test_parse_refuses_what_is_not_a_device_topic(bad: str) -> None:
    assert topics.parse(bad) is None


def test_same_answers_on_micropython(run_micropython: MicroRun, tmp_path: Path) -> None:
    script = tmp_path / "ids_topics.py"
    script.write_text(
        "from surge_protocol import ids, topics\n"
        "pub = bytes(range(32))\n"
        "print(ids.device_id(pub), ids.prev_hash(pub).hex() if hasattr(b'', 'hex') else '')\n"
        "print(topics.topic('demo', ids.device_id(pub), 'report'))\n"
        "print(topics.parse('surge/v1/demo/ab/birth'))\n"
    )
    proc = run_micropython(script)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pub = bytes(range(32))
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[0] == ids.device_id(pub)
    assert lines[1] == topics.topic("demo", ids.device_id(pub), "report")
    assert lines[2] == "('demo', 'ab', 'birth')"
