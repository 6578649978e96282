"""Ingest loads a group's uncached devices and their states in bulk; outcomes are the same.

gateway/ingest.py fills its device and state caches for a whole commit group
with one query (Store.devices_with_state) instead of two lookups per device.
These tests drive Ingest.process on a real SQLite store, with the bulk load
and without it, and compare what each stored.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from gateway.ingest import Ingest
from gateway.metrics import IngestMetrics
from gateway.mqtt_codec import Publish
from gateway.store import Store
from gw_helpers import Device


def _enrolled(store: Store, n: int) -> list[Device]:
    devices = [Device() for _ in range(n)]
    for d in devices:
        store.enroll(d.id, d.key.public, d.board, d.fleet, "")
    return devices


def test_devices_with_state(tmp_path: Path) -> None:
    store = Store(tmp_path / "gw.db")
    a, b, c = _enrolled(store, 3)
    ingest = Ingest(GatewayConfig(db=str(tmp_path / "gw.db")), store, IngestMetrics(), "t")
    ingest.process([Publish(b.topic, b.report(), 1, False, False, 1)])
    found = {dev.device_id: state for dev, state in store.devices_with_state([a.id, b.id, "00" * 8, c.id])}
    assert set(found) == {a.id, b.id, c.id}  # unknown ids are left out
    assert found[a.id] is None and found[c.id] is None
    assert found[b.id] is not None and (found[b.id].boot, found[b.id].seq) == (1, 0)
    assert found[b.id].last_hash == store.device_state(b.id).last_hash  # type: ignore[union-attr]
    many = _enrolled(store, 1200)  # more ids than one query takes
    assert len(store.devices_with_state([d.id for d in many])) == 1200


def _run(db: Path, groups: list[list[Publish]], bulk: bool, monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    store = Store(db)
    ingest = Ingest(GatewayConfig(db=str(db), rate_limit_per_s=1e6, rate_burst=10_000), store, IngestMetrics(), "t")
    if not bulk:
        monkeypatch.setattr(ingest, "_prefetch", lambda group: None)
    for group in groups:
        ingest.process(group)
    rows = store.db.execute("SELECT device_id, boot, seq, gap, cose FROM reports ORDER BY id").fetchall()
    rejected = store.db.execute("SELECT device_id, reason FROM rejections ORDER BY id").fetchall()
    return rows + rejected


def test_bulk_loaded_caches_decide_like_per_device_lookups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A device with history before the first group (its next report continues
    # the chain: no gap), new devices, a revoked one, an unknown id, a resend and
    # a device reporting twice within one group.
    template = tmp_path / "template.db"
    store = Store(template)
    devices = _enrolled(store, 6)
    old = devices[0]
    Ingest(GatewayConfig(db=str(template)), store, IngestMetrics(), "t").process(
        [Publish(old.topic, old.report(), 1, False, False, 1)]
    )
    store.revoke(devices[5].id)
    store.close()
    stranger = Device()
    first = [Publish(d.topic, d.report(), 1, False, False, i + 1) for i, d in enumerate(devices)]
    first.append(Publish(stranger.topic, stranger.report(), 1, False, False, 50))
    replay = first[1]
    second = [
        Publish(devices[1].topic, devices[1].report(), 1, False, False, 60),
        Publish(devices[1].topic, devices[1].report(seq=7), 1, False, False, 61),
        replay,
    ]
    outcomes = []
    for bulk in (True, False):
        db = tmp_path / ("bulk.db" if bulk else "single.db")
        db.write_bytes(template.read_bytes())
        outcomes.append(_run(db, [first, second], bulk, monkeypatch))
    assert outcomes[0] == outcomes[1]
    reasons = {r[1] for r in outcomes[0] if len(r) == 2}
    assert reasons == {"unknown_device", "revoked_device"}
    stored = [r for r in outcomes[0] if len(r) == 5]
    assert len(stored) == 8 and stored[1][:3] == (old.id, 1, 1) and not stored[1][3]  # no gap for the old device
    assert stored[-1][3]  # seq 7 after seq 1: a gap


def test_first_reports_of_new_devices_cost_no_query_each(tmp_path: Path) -> None:
    # A group of first reports: the bulk load says these devices have no state
    # yet, so none is looked up again one by one (a fleet of new devices was one
    # query per report, bench group 7).
    store = Store(tmp_path / "gw.db")
    devices = _enrolled(store, 200)
    ingest = Ingest(
        GatewayConfig(db=str(tmp_path / "gw.db"), rate_limit_per_s=1e6, rate_burst=10_000), store, IngestMetrics(), "t"
    )
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    ingest.process([Publish(d.topic, d.report(), 1, False, False, i + 1) for i, d in enumerate(devices)])
    store.db.set_trace_callback(None)
    assert store.report_count() == 200
    assert not [s for s in statements if "FROM device_state WHERE device_id" in s and "IN (" not in s], statements
