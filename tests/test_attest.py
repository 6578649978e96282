"""The attested object (gateway/attest.py, docs/protocol.md §2.8), sans-I/O: the flag rules, the
signature and its binding to the report, the committed vector, and the attestation stage on a real
SQLite store writing each report's row once."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surge_protocol import claims as C
from conftest import VECTORS
from gateway import attest
from gateway.chain.keys import ChainKey
from gateway.receipts import canonical
from gateway.store import AcceptedRow, Store
from gw_helpers import Device

VECTOR = json.loads((VECTORS / "attested.json").read_text())  # version 1: one signature per object
VECTOR_2 = json.loads((VECTORS / "attested_v2.json").read_text())  # version 2: one signature per group
KEY = ChainKey.from_hex(VECTOR["gateway_key"])
REPORT = bytes.fromhex(VECTOR["report"])


def claims(bw: int | None = None, storage: int | None = None) -> dict[Any, Any]:
    s: dict[int, int] = {}
    if bw is not None:
        s[C.BW_UP] = bw
    if storage is not None:
        s[C.STORAGE_TOTAL] = storage
    return {C.SURGE: s}


def test_flag_rules() -> None:
    none = (0, 0, 0, 0)
    assert attest.flags_for(claims(), None, none) == []
    assert attest.flags_for(claims(bw=1000), None, none) == ["bw_unverified"]
    limit = 100_000 * (1 + attest.BW_TOLERANCE) + attest.BW_FLOOR
    assert attest.flags_for(claims(bw=int(limit)), 100_000, none) == []
    assert attest.flags_for(claims(bw=int(limit) + 1), 100_000, none) == ["bw_overclaim"]
    assert attest.flags_for(claims(storage=10), None, none) == ["storage_unverified"]
    assert attest.flags_for(claims(storage=10), None, (5, 1, 0, 0)) == ["storage_overclaim"]
    assert attest.flags_for(claims(storage=5), None, (5, 1, 0, 0)) == []
    assert attest.flags_for(claims(storage=5), None, (5, 1, 0, 1)) == ["challenge_failed"]
    assert attest.flags_for(claims(bw=10**9, storage=9), 10, (5, 0, 2, 0)) == [
        "bw_overclaim",
        "challenge_failed",
        "storage_overclaim",
    ]


def test_vector_reproduces_and_verifies() -> None:
    p, ok, failed, timed_out = VECTOR["standing"]
    standing = (p, ok, failed, timed_out)
    body = attest.build(
        "gw-lab",
        KEY.address,
        "21fe31dfa154a261",
        12,
        123456,
        REPORT,
        1795000000.123,
        VECTOR["measured_bw_up"],
        standing,
        attest.flags_for(attest.claims_of(REPORT), VECTOR["measured_bw_up"], standing),
        version=1,
    )
    message, sig = attest.signed(body, KEY.sign_message)
    assert message.decode() == VECTOR["canonical_body"]
    assert sig.hex() == VECTOR["signature"]  # EIP-191 with RFC 6979 nonces: deterministic
    assert json.loads(attest.to_json(message.decode(), sig)) == VECTOR["attested"]
    assert attest.verify(VECTOR["attested"], REPORT, 12, 123456, KEY.address) == VECTOR["attested"]
    assert canonical({k: v for k, v in VECTOR["attested"].items() if k != "signature"}) == message


def test_v2_vector_reproduces_and_verifies() -> None:
    """A group of three bodies, one signature over their root; the middle object is the reference report's."""
    p, ok, failed, timed_out = VECTOR_2["standing"]
    standing = (p, ok, failed, timed_out)
    body = attest.build(
        "gw-lab",
        KEY.address,
        "21fe31dfa154a261",
        12,
        123456,
        REPORT,
        1795000000.123,
        VECTOR_2["measured_bw_up"],
        standing,
        attest.flags_for(attest.claims_of(REPORT), VECTOR_2["measured_bw_up"], standing),
    )
    bodies = [b.encode() for b in VECTOR_2["group_bodies"]]
    assert canonical(body) == bodies[1]
    texts, sig = attest.signed_group(bodies, KEY.sign_message)
    assert sig.hex() == VECTOR_2["signature"]  # RFC 6979 nonces: deterministic
    assert texts[1] == VECTOR_2["stored_body"]
    doc = VECTOR_2["attested"]
    assert json.loads(attest.to_json(texts[1], sig)) == doc
    assert attest.group_message(bytes.fromhex(doc["group"]["root"]), 3).decode() == VECTOR_2["group_message"]
    assert attest.verify(doc, REPORT, 12, 123456, KEY.address) == doc
    # The spliced texts are what canonical JSON gives, for every member of the group.
    for i, (b, t) in enumerate(zip(bodies, texts)):
        assert canonical(dict(json.loads(b), group=json.loads(t)["group"])).decode() == t
        assert json.loads(t)["group"]["index"] == i


@settings(max_examples=200, deadline=None)
@given(member=st.sampled_from([m for m in attest.MEMBERS if m != "signature"]), data=st.data())
def test_any_changed_member_fails(member: str, data: st.DataObject) -> None:
    doc = copy.deepcopy(VECTOR["attested"])
    old = doc[member]
    new = data.draw(
        st.one_of(
            st.integers(0, 2**40),
            st.text(max_size=8),
            st.none(),
            st.just(["bw_overclaim"]),
            st.just({"passed": 9, "failed": 0, "timed_out": 0}),
        ).filter(lambda x: x != old)
    )
    doc[member] = new
    with pytest.raises(attest.AttestError):
        attest.verify(doc, REPORT, 12, 123456, KEY.address)


@settings(max_examples=200, deadline=None)
@given(
    member=st.sampled_from([m for m in attest.MEMBERS_V2 if m != "signature"] + list(attest.GROUP_MEMBERS)),
    data=st.data(),
)
def test_v2_any_changed_member_fails(member: str, data: st.DataObject) -> None:
    """A tampered v2 object fails: a body member breaks the proof, a group member the proof or signature."""
    doc = copy.deepcopy(VECTOR_2["attested"])
    where = doc["group"] if member in attest.GROUP_MEMBERS else doc
    old = where[member]
    new = data.draw(
        st.one_of(
            st.integers(0, 2**40),
            st.text(max_size=8),
            st.none(),
            st.just(["bw_overclaim"]),
            st.just({"passed": 9, "failed": 0, "timed_out": 0}),
            st.just(["00" * 32, "11" * 32]),
            st.just("22" * 32),
        ).filter(lambda x: x != old)
    )
    where[member] = new
    with pytest.raises(attest.AttestError):
        attest.verify(doc, REPORT, 12, 123456, KEY.address)


def test_v2_group_checks_say_what_is_wrong() -> None:
    doc = VECTOR_2["attested"]
    with pytest.raises(attest.AttestError, match="not in its signed group"):
        attest.verify(dict(doc, flags=[]), REPORT, 12, 123456)
    with pytest.raises(attest.AttestError, match="no group"):
        attest.verify({k: v for k, v in doc.items() if k != "group"}, REPORT, 12, 123456)
    with pytest.raises(attest.AttestError, match="0 <= index < size"):
        attest.verify(dict(doc, group=dict(doc["group"], index=3)), REPORT, 12, 123456)
    with pytest.raises(attest.AttestError, match="not by the anchoring gateway"):
        attest.verify(doc, REPORT, 12, 123456, ChainKey.generate().address)


def test_binding_to_report_and_gateway() -> None:
    doc = VECTOR["attested"]
    with pytest.raises(attest.AttestError, match="another report"):
        attest.verify(doc, REPORT + b"\x00", 12, 123456)
    with pytest.raises(attest.AttestError, match="boot/seq"):
        attest.verify(doc, REPORT, 12, 123457)
    with pytest.raises(attest.AttestError, match="not by the anchoring gateway"):
        attest.verify(doc, REPORT, 12, 123456, ChainKey.generate().address)
    # Signed by another key that names itself: the signature matches, but not the anchoring gateway.
    other = ChainKey.generate()
    body = dict({k: v for k, v in doc.items() if k != "signature"}, gateway_address=other.address)
    forged = dict(body, signature=other.sign_message(canonical(body)).hex())
    attest.verify(forged, REPORT, 12, 123456)
    with pytest.raises(attest.AttestError):
        attest.verify(forged, REPORT, 12, 123456, KEY.address)
    with pytest.raises(attest.AttestError, match="unknown members"):
        attest.verify(dict(doc, extra=1), REPORT, 12, 123456)


def test_stage_attests_each_report_once_and_waits_for_pending_runs(tmp_path: Path) -> None:
    store = Store(tmp_path / "gw.db")
    dev = Device(board="rpi-4")
    store.enroll(dev.id, dev.key.public, dev.board, dev.fleet, "")
    stage = attest.AttestStage(
        Store(tmp_path / "gw.db"), "gw-test", KEY.address, KEY.sign_message, standing=attest.no_standing
    )
    now = time.time()
    reps = [dev.report(bw=(1_000_000, 1)) for _ in range(3)]
    store.commit_outcomes([AcceptedRow(dev.id, 1, i, now, r, False, C.prev_hash(r)) for i, r in enumerate(reps)], [])
    store.db.executemany(
        "INSERT INTO probe_runs VALUES (?, 1, ?, ?, ?, 100, 2, 10, ?)",
        [(dev.id, 0, "checked", 500_000, now), (dev.id, 1, "pending", None, now)],
    )
    assert stage.step() == 1  # report 1 waits for its run; report 2 waits behind it
    store.db.execute("UPDATE probe_runs SET outcome='checked', bw_up=1000 WHERE seq=1")
    assert stage.step() == 2 and stage.step() == 0
    rows = store.db.execute("SELECT seq, bw_up, flags, body, signature FROM attestations ORDER BY seq").fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (0, 500_000, "storage_unverified"),
        (1, 1000, "bw_overclaim,storage_unverified"),
        (2, None, "bw_unverified,storage_unverified"),
    ]
    for seq, _, _, body, sig in rows:
        attest.verify(json.loads(attest.to_json(body, bytes(sig))), reps[seq], 1, seq, KEY.address)
    # A restarted stage resumes from its cursor: nothing is signed twice.
    again = attest.AttestStage(
        Store(tmp_path / "gw.db"), "gw-test", KEY.address, KEY.sign_message, standing=attest.no_standing
    )
    assert again.step() == 0
    # A run still pending after PENDING_WAIT_S is given up: no rate, the row says why.
    store.commit_outcomes([AcceptedRow(dev.id, 1, 3, now, dev.report(), False, b"\x00" * 32)], [])
    store.db.execute("INSERT INTO probe_runs VALUES (?, 1, 3, 'pending', NULL, 0, 0, 0, ?)", (dev.id, now))
    late = attest.AttestStage(
        Store(tmp_path / "gw.db"),
        "gw-test",
        KEY.address,
        KEY.sign_message,
        standing=attest.no_standing,
        clock=lambda: now + attest.PENDING_WAIT_S + 1,
    )
    assert late.step() == 1
    assert store.db.execute("SELECT outcome FROM probe_runs WHERE seq=3").fetchone()[0] == "absent"
    assert attest.attestation_counts(store)["flags"]["bw_unverified"] == 2


@settings(max_examples=300, deadline=None)
@given(
    gateway_id=st.text(max_size=40),
    device=st.text(max_size=20),
    bw=st.none() | st.integers(0, 2**40),
    flags=st.lists(st.sampled_from(attest.FLAGS), unique=True),
    sig=st.binary(min_size=65, max_size=65),
    standing=st.tuples(st.integers(0, 2**50), st.integers(0, 99), st.integers(0, 99), st.integers(0, 99)),
)
def test_to_json_splices_the_signature_where_parsing_would_put_it(
    gateway_id: str, device: str, bw: int | None, flags: list[str], sig: bytes, standing: tuple[int, int, int, int]
) -> None:
    body = attest.build(gateway_id + ',"storage_bytes":', device, device, 1, 2, b"cose", 1.5, bw, standing, flags)
    body_json = canonical(body).decode()
    doc = json.loads(body_json)
    doc["signature"] = sig.hex()
    assert attest.to_json(body_json, sig) == canonical(doc).decode()


def test_stage_counts_attestations_and_flags_per_fleet(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from gateway.metrics import AttestMetrics

    store = Store(tmp_path / "gw.db")
    north, south = Device(fleet="north", board="rpi-4"), Device(fleet="south", board="rpi-4")
    for d in (north, south):
        store.enroll(d.id, d.key.public, d.board, d.fleet, "")
    stage = attest.AttestStage(
        Store(tmp_path / "gw.db"), "gw-test", KEY.address, KEY.sign_message, standing=attest.no_standing
    )
    now = time.time()
    rows = [AcceptedRow(north.id, 1, i, now, north.report(bw=(1_000_000, 1)), False, b"\x00" * 32) for i in range(2)]
    rows.append(AcceptedRow(south.id, 1, 0, now, south.report(), False, b"\x00" * 32))
    store.commit_outcomes(rows, [])
    # North's first run was measured at a tenth of its claim, its second not at all.
    store.db.execute("INSERT INTO probe_runs VALUES (?, 1, 0, 'checked', 100000, 100, 2, 10, ?)", (north.id, now))
    assert stage.step() == 3
    counts = stage.drain()
    assert counts == {
        ("north", "attested"): 2,
        ("north", "measured"): 1,
        ("north", "bw_overclaim"): 1,
        ("north", "bw_unverified"): 1,
        ("north", "storage_unverified"): 2,
        ("south", "attested"): 1,
        ("south", "bw_unverified"): 1,
        ("south", "storage_unverified"): 1,
    }
    assert stage.drain() == {}
    registry = CollectorRegistry()
    m = AttestMetrics(registry)
    for (fleet, key), n in counts.items():
        m.count(fleet, key, n)
    assert registry.get_sample_value("surge_attestation_flags_total", {"fleet": "north", "flag": "bw_overclaim"}) == 1
    assert (
        registry.get_sample_value("surge_attestation_flags_total", {"fleet": "south", "flag": "bw_overclaim"}) is None
    )
    assert registry.get_sample_value("surge_reports_attested_total", {"fleet": "south"}) == 1
    assert registry.get_sample_value("surge_reports_bw_measured_total", {"fleet": "north"}) == 1
    # The status: totals as before, and the same per fleet.
    st = attest.attestation_counts(store)
    assert (st["reports"], st["bw_measured"]) == (3, 1)
    assert st["flags"] == {"bw_overclaim": 1, "bw_unverified": 2, "storage_unverified": 3}
    assert st["fleets"] == {
        "north": {
            "reports": 2,
            "bw_measured": 1,
            "flags": {"bw_overclaim": 1, "bw_unverified": 1, "storage_unverified": 2},
        },
        "south": {"reports": 1, "bw_measured": 0, "flags": {"bw_unverified": 1, "storage_unverified": 1}},
    }


def test_stage_signs_once_per_group_and_every_object_verifies(tmp_path: Path) -> None:
    store = Store(tmp_path / "gw.db")
    dev = Device(board="rpi-4")
    store.enroll(dev.id, dev.key.public, dev.board, dev.fleet, "")
    signatures: list[bytes] = []

    def sign(message: bytes) -> bytes:
        signatures.append(KEY.sign_message(message))
        return signatures[-1]

    stage = attest.AttestStage(Store(tmp_path / "gw.db"), "gw-test", KEY.address, sign, standing=attest.no_standing)
    n = 2 * attest.GROUP + 5
    reps = [dev.report() for _ in range(n)]
    store.commit_outcomes(
        [AcceptedRow(dev.id, 1, i, time.time(), r, False, b"\x00" * 32) for i, r in enumerate(reps)], []
    )
    assert stage.step() == n
    assert len(signatures) == 3  # two full groups and one of 5
    rows = store.db.execute("SELECT seq, body, signature FROM attestations ORDER BY seq").fetchall()
    for seq, body, sig in rows:
        doc = attest.verify(json.loads(attest.to_json(body, bytes(sig))), reps[seq], 1, seq, KEY.address)
        assert doc["v"] == 2 and doc["group"]["index"] == seq % attest.GROUP
