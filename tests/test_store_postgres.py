"""The Store on both engines: SQLite (the embedded default) and PostgreSQL (a cluster's database).

Every test runs twice, on a SQLite file and on a fresh database of the private
PostgreSQL server (tests/pg_server.py), and asserts the same outcomes: the
schema from an empty database, refusing a newer one, the registry, group
commits with their dedup, batches and anchors, and two connections (two
gateways) inserting the same report.
"""

from __future__ import annotations

import logging

import pytest

from gateway.config import GatewayConfig
from gateway.db import is_postgres
from gateway.db.schema import SCHEMA_VERSION
from gateway.ingest import Ingest
from gateway.metrics import IngestMetrics
from gateway.mqtt_codec import Publish
from gateway.store import AcceptedRow, Batch, RejectedRow, Store, StoreError
from gw_helpers import Device

TABLES = (
    "devices",
    "device_state",
    "reports",
    "rejections",
    "rejection_counts",
    "batches",
    "anchors",
    "meta",
    "device_keys",
    "attestations",
    "probe_runs",
    "probe_counts",
    "audit_plots",
    "audit_challenges",
    "audit_counts",
    "reward_epochs",
    "reward_anchors",
    "reward_cumulative",
)


def _schema_version(store: Store) -> int:
    if store.shared:
        return int(store.db.execute("SELECT version FROM surge_schema").fetchone()[0])
    return int(store.db.execute("PRAGMA user_version").fetchone()[0])


def _row(dev_id: str, seq: int, at: float = 1000.0) -> AcceptedRow:
    return AcceptedRow(dev_id, 1, seq, at + seq, b"cose-%d" % seq, False, bytes([seq % 256]) * 32)


def test_migrates_an_empty_database(db_target: str) -> None:
    store = Store(db_target)
    assert store.shared == is_postgres(db_target)
    assert _schema_version(store) == SCHEMA_VERSION
    for table in TABLES:  # every migration ran: each table answers a query
        assert store.db.execute("SELECT COUNT(*) FROM %s" % table).fetchone()[0] == 0
    store.close()
    again = Store(db_target)  # opening a current database migrates nothing
    assert _schema_version(again) == SCHEMA_VERSION
    again.close()


def test_refuses_a_newer_schema(db_target: str) -> None:
    store = Store(db_target)
    if store.shared:
        store.db.execute("UPDATE surge_schema SET version=?", (SCHEMA_VERSION + 1,))
    else:
        store.db.execute("PRAGMA user_version=%d" % (SCHEMA_VERSION + 1))
    store.close()
    with pytest.raises(StoreError, match="newer than this gateway.*upgrade Surge"):
        Store(db_target)


def test_registry(db_target: str) -> None:
    store = Store(db_target)
    a, b = Device(), Device()
    dev = store.enroll(a.id, a.key.public, a.board, a.fleet, "0x" + "11" * 20)
    assert dev.active and dev.pubkey == a.key.public and isinstance(dev.pubkey, bytes)
    assert store.enroll(a.id, a.key.public, a.board, a.fleet, "") == dev  # twice is harmless
    with pytest.raises(StoreError, match="different key"):
        store.enroll(a.id, b.key.public, a.board, a.fleet, "")
    store.enroll(b.id, b.key.public, b.board, b.fleet, "")
    assert [d.device_id for d in store.devices()] == [a.id, b.id]
    version = store.meta("registry_version")
    assert not store.revoke(b.id).active
    assert store.meta("registry_version") != version  # ingest drops its cache
    with pytest.raises(StoreError, match="revoked"):
        store.enroll(b.id, b.key.public, b.board, b.fleet, "")
    with pytest.raises(StoreError, match="no device"):
        store.revoke("00" * 8)
    found = dict(store.devices_with_state([a.id, b.id, "00" * 8]))
    assert {d.device_id for d in found} == {a.id, b.id}


def test_group_commit_dedup_and_cursors(db_target: str) -> None:
    store = Store(db_target)
    d = Device()
    store.enroll(d.id, d.key.public, d.board, d.fleet, "")
    rejected = [RejectedRow(5.0, "surge/v1/x/y/report", None, "bad_signature", "nope", b"\x00", "ab" * 32)]
    assert store.commit_outcomes([_row(d.id, s) for s in range(5)], rejected) == 0
    # The same reports again plus two new: three rows stored, five skipped (duplicates).
    assert store.commit_outcomes([_row(d.id, s) for s in range(7)], []) == 5
    assert store.report_count() == 7
    st = store.device_state(d.id)
    assert st is not None and (st.boot, st.seq) == (1, 6)
    assert store.device_stats()[d.id][0] == 7  # `reports` counts stored rows, not attempts
    assert store.seen(d.id, 1, 3) == b"cose-3"
    rep = store.report(d.id, 1, 3)
    assert rep is not None and rep.cose == b"cose-3" and rep.batch_seq is None
    assert store.rejection_counts() == {"bad_signature": 1}
    assert store.rejections_after(0, 10)[0][1].payload == b"\x00"
    max_report, max_rejection = store.max_ids()
    assert max_rejection >= 1 and [r[5] for r in store.reports_after(0, 100)] == list(range(7))
    assert store.reports_after(max_report, 10) == []


def test_batches_and_anchors(db_target: str) -> None:
    store = Store(db_target)
    d = Device()
    store.enroll(d.id, d.key.public, d.board, d.fleet, "")
    store.commit_outcomes([_row(d.id, s) for s in range(4)], [])
    ids = [r[0] for r in store.unbatched(10)]
    assert store.unbatched_count() == 4 and store.oldest_unbatched_at() == 1000.0
    batch = Batch(1, "gw-t", b"\x01" * 32, 4, 1000.0, 1003.0, b"\x00" * 32, 1004.0, "closed")
    store.add_batch(batch, ids)
    assert store.unbatched_count() == 0 and store.batch(1) == batch
    assert [r.leaf_index for r in store.batch_leaves(1)] == [0, 1, 2, 3]
    assert store.batch_fleet_counts(1) == {d.fleet: 4}
    with pytest.raises(Exception):  # one batch per seq: a second leader cannot add its own batch 1
        store.add_batch(batch, [])
    aid = store.begin_anchor(1, 31337, "0x" + "22" * 20, "0x" + "33" * 20)
    assert store.live_anchor(1) == store.anchor(aid) and store.batch(1).state == "anchoring"  # type: ignore[union-attr]
    store.update_anchor(aid, "submitted", tx_hash=b"\x44" * 32)  # the moves of gateway/lifecycle.py
    store.update_anchor(aid, "confirmed", block_number=7, block_hash=b"\x55" * 32, gas_used=50_000, attestation=b"sig")
    a = store.confirmed_anchor(1)
    assert a is not None and a.tx_hash == b"\x44" * 32 and a.block_number == 7
    assert store.first_unconfirmed() is None and store.batch_state_counts() == {"confirmed": 1}
    store.mark_receipted(1)
    assert [b.seq for b in store.recent_confirmed(5)] == [1]
    assert store.meta_setdefault("gateway_id", "gw-a") == "gw-a"
    assert store.meta_setdefault("gateway_id", "gw-b") == "gw-a"  # first writer wins


def test_two_connections_accept_a_report_once(db_target: str) -> None:
    # Two gateways of a cluster (two connections) store the same reports: one row each.
    first, second = Store(db_target), Store(db_target)
    d = Device()
    first.enroll(d.id, d.key.public, d.board, d.fleet, "")
    assert first.commit_outcomes([_row(d.id, s) for s in range(3)], []) == 0
    assert second.commit_outcomes([_row(d.id, s) for s in range(3)], []) == 3
    assert first.report_count() == second.report_count() == 3


def test_second_ingest_counts_a_duplicate(db_target: str) -> None:
    # The real ingest path on two stores: the report the other gateway stored is a
    # duplicate here (acknowledged, counted, never a second row).
    d = Device()
    cfg = GatewayConfig(db=db_target, rate_limit_per_s=1e6, rate_burst=10_000)
    a_store, b_store = Store(db_target), Store(db_target)
    a_store.enroll(d.id, d.key.public, d.board, d.fleet, "")
    a, b = Ingest(cfg, a_store, IngestMetrics(), "gw"), Ingest(cfg, b_store, IngestMetrics(), "gw")
    reports = [d.report() for _ in range(3)]
    b.process([Publish(d.topic, reports[0], 1, False, False, 1)])  # b caches the device's state at seq 0
    a.process([Publish(d.topic, r, 1, False, False, i + 1) for i, r in enumerate(reports[1:])])
    b.process([Publish(d.topic, reports[1], 1, False, False, 9)])  # redelivered to b after a stored it
    assert a_store.report_count() == 3
    assert b.metrics.duplicates._value.get() == 1 and b.metrics.accepted._value.get() == 1
    assert a.metrics.accepted._value.get() == 2


def test_two_ingests_out_of_order_accept_every_report_once(db_target: str) -> None:
    # Two gateways get one device's reports in parallel: seq 2 and 4 commit on a before
    # seq 1 and 3 arrive on b.  The late ones are accepted, S stays at 4, and the gaps
    # recorded for 2 and 4 (they came first) are cleared once their predecessors are in.
    d = Device()
    cfg = GatewayConfig(db=db_target, rate_limit_per_s=1e6, rate_burst=10_000)
    a_store, b_store = Store(db_target), Store(db_target)
    a_store.enroll(d.id, d.key.public, d.board, d.fleet, "")
    a, b = Ingest(cfg, a_store, IngestMetrics(), "gw"), Ingest(cfg, b_store, IngestMetrics(), "gw")
    r = [d.report() for _ in range(5)]
    a.process([Publish(d.topic, r[0], 1, False, False, 1)])
    a.process([Publish(d.topic, r[2], 1, False, False, 2), Publish(d.topic, r[4], 1, False, False, 3)])
    b.process([Publish(d.topic, r[3], 1, False, False, 1), Publish(d.topic, r[1], 1, False, False, 2)])
    assert a_store.report_count() == 5
    assert a.metrics.accepted._value.get() + b.metrics.accepted._value.get() == 5
    st = a_store.device_state(d.id)
    assert st is not None and st.seq == 4
    assert [int(g[0]) for g in a_store.db.execute("SELECT gap FROM reports ORDER BY seq")] == [0] * 5
    assert a_store.device_stats()[d.id][1] == 0
    b.process([Publish(d.topic, r[1], 1, False, False, 3)])  # redelivered: a duplicate
    assert b.metrics.duplicates._value.get() == 1 and a_store.report_count() == 5


def test_reconnects_after_the_server_drops_the_connection(
    pg_server,
    pg_url: str,  # type: ignore[no-untyped-def]
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Store(pg_url)
    d = Device()
    store.enroll(d.id, d.key.public, d.board, d.fleet, "")
    dbname = pg_url.rsplit("/", 1)[1]
    assert pg_server.terminate_backends(dbname) >= 1
    caplog.set_level(logging.WARNING, "surge.gateway.db")
    with pytest.raises(Exception):  # the statement in flight fails: the caller does not acknowledge
        store.commit_outcomes([_row(d.id, 0)], [])
    assert "lost the connection to PostgreSQL" in caplog.text
    assert store.commit_outcomes([_row(d.id, 0)], []) == 0  # the next one reconnects
    assert "reconnected to PostgreSQL" in caplog.text
    assert store.report_count() == 1


def test_config_file_keeps_a_postgres_url(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A relative SQLite path is taken relative to the config file; a URL is left as written.
    from gateway import config as gwconfig

    url = "postgresql://surge@127.0.0.1:5432/surge"
    conf = tmp_path / "gw.toml"
    conf.write_text('[gateway]\ndb = "%s"\nnode = "a"\n' % url)
    cfg = gwconfig.load(str(conf), {})
    assert cfg.db == url and cfg.client_id("gw-1", "pub") == "surge-gw-gw-1-a-pub"
    conf.write_text('[gateway]\ndb = "gw.db"\n')
    cfg = gwconfig.load(str(conf), {})
    assert cfg.db == str(tmp_path / "gw.db") and cfg.client_id("gw-1") == "surge-gw-gw-1"
