"""The gateway on a 3-node RabbitMQ cluster (--source amqp://...): nothing PUBACKed is lost or accepted twice.

Real nodes (gateway/cluster/rabbitmq.py), real MQTT publishers that fail over
between nodes (gateway/cluster/load.py), the real `surge gateway run`.  Each
test checks report by report: every (device, boot, seq) whose PUBACK a
publisher saw is in the gateway's store, once.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
from pathlib import Path

from cluster_fixtures import Fleet, accepted, enroll_all, rabbit, start_cluster_gateway
from gateway import config
from gateway.cluster.rabbitmq import RabbitCluster
from gateway.source_amqp import parse_source, topic_of
from broker import free_port
from gateway.mqtt_client import Connection
from gw_process import gateway_log, query, stop, surge, wait_for

__all__ = ["rabbit"]  # the module-scoped cluster fixture


def _check_once(db: Path, fleet: Fleet, timeout: float) -> None:
    acked = fleet.acked()
    assert acked, "no report was acknowledged"

    def all_in() -> bool:
        return acked <= set(accepted(db))

    try:
        wait_for(all_in, timeout, "every PUBACKed report accepted", interval=0.5)
    except AssertionError:
        missing = sorted(acked - set(accepted(db)))
        raise AssertionError(
            "%d of %d PUBACKed reports never accepted, e.g. %s\n%s"
            % (len(missing), len(acked), missing[:5], gateway_log(db)[-3000:])
        ) from None
    twice = [k for k, n in collections.Counter(accepted(db)).items() if n > 1]
    assert not twice, "accepted twice: %s" % twice[:5]


def test_reports_published_while_no_gateway_runs_are_accepted_when_one_starts(
    rabbit: RabbitCluster, tmp_path: Path
) -> None:
    db = tmp_path / "gw.db"
    fleet = Fleet(rabbit, devices=8, reports=25)
    enroll_all(db, fleet.devices)
    fleet.start()
    fleet.join(120)
    assert len(fleet.acked()) == 8 * 25
    # A '.' inside a topic level: still queued (not confirmed and dropped), rejected by the gateway.
    odd = Connection("127.0.0.1", rabbit.mqtt_ports[1], "odd-topic", version="3.1.1", clean_start=True)
    odd.connect()
    odd.publish([("surge/v1/cluster.x/dev/report", fleet.reports[0][0][1], False)])
    assert odd.wait_acked(20)
    odd.disconnect()
    gw = start_cluster_gateway(db, rabbit, mqtt_node=3, source_nodes=[1, 2, 3])
    try:
        _check_once(db, fleet, 120)
        assert len(accepted(db)) == 8 * 25
        wait_for(
            lambda: query(db, "SELECT count FROM rejection_counts WHERE reason='bad_topic'"),
            60,
            "the odd topic rejected as bad_topic",
        )
    finally:
        stop(gw)
    assert gw.returncode == 0, gateway_log(db)[-3000:]


def test_broker_node_sigkill_under_load_loses_and_duplicates_nothing(rabbit: RabbitCluster, tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    # Paced (about 10 s of publishing) so that the kill lands while every device is still sending.
    fleet = Fleet(rabbit, devices=24, reports=80, window=5, pause_s=0.6)
    enroll_all(db, fleet.devices)
    leader = rabbit.queue_leader()
    assert leader is not None
    others = [n.index for n in rabbit.nodes if n.index != leader]
    # The gateway consumes from the leader first (it must move), and publishes through a survivor.
    gw = start_cluster_gateway(db, rabbit, mqtt_node=others[0], source_nodes=[leader, *others])
    try:
        wait_for(lambda: "consuming reports from the queue" in gateway_log(db), 120, "the gateway consuming")
        fleet.start()
        wait_for(lambda: len(accepted(db)) >= 300, 120, "the gateway accepting under load")
        assert len(fleet.acked()) < 24 * 80 * 0.7, "publishing nearly over before the kill"
        rabbit.kill_node(leader)
        fleet.join(240)
        assert fleet.reconnects() > 0, "no publisher had to fail over: the kill did not land under load"
        _check_once(db, fleet, 180)
        assert "lost the report queue" in gateway_log(db)
        assert gw.poll() is None, "the gateway stopped: %s" % gateway_log(db)[-3000:]
    finally:
        stop(gw)
        rabbit.start_node(leader)


def test_sigkill_of_the_gateways_mqtt_node_does_not_stop_ingest(rabbit: RabbitCluster, tmp_path: Path) -> None:
    """--broker's node dies under load: the gateway keeps consuming the queue through the others."""
    db = tmp_path / "gw.db"
    fleet = Fleet(rabbit, devices=12, reports=60, window=5, pause_s=0.5)
    enroll_all(db, fleet.devices)
    leader = rabbit.queue_leader()
    victim = next(n.index for n in rabbit.nodes if n.index != leader)
    sources = [n.index for n in rabbit.nodes if n.index != victim]
    gw = start_cluster_gateway(db, rabbit, mqtt_node=victim, source_nodes=sources)
    try:
        wait_for(lambda: "consuming reports from the queue" in gateway_log(db), 120, "the gateway consuming")
        fleet.start()
        wait_for(lambda: len(accepted(db)) >= 100, 120, "the gateway accepting under load")
        rabbit.kill_node(victim)
        fleet.join(240)
        _check_once(db, fleet, 180)  # with the gateway's MQTT node still down
        assert len(accepted(db)) == 12 * 60
        assert "still consuming reports from the queue" in gateway_log(db)
        assert gw.poll() is None, gateway_log(db)[-3000:]
    finally:
        stop(gw)
        rabbit.start_node(victim)


def test_gateway_sigkill_mid_stream_then_restart_loses_and_duplicates_nothing(
    rabbit: RabbitCluster, tmp_path: Path
) -> None:
    db = tmp_path / "gw.db"
    fleet = Fleet(rabbit, devices=16, reports=60, window=5, pause_s=0.5)
    enroll_all(db, fleet.devices)
    gw = start_cluster_gateway(db, rabbit, mqtt_node=1, source_nodes=[1, 2, 3])
    try:
        wait_for(lambda: "consuming reports from the queue" in gateway_log(db), 120, "the gateway consuming")
        fleet.start()
        wait_for(lambda: len(accepted(db)) >= 150, 120, "the gateway accepting under load")
        assert len(accepted(db)) < 16 * 60, "publishing over before the kill"
        gw.send_signal(signal.SIGKILL)
        gw.wait(30)
        fleet.join(240)  # publishing goes on while no gateway runs
        gw = start_cluster_gateway(db, rabbit, mqtt_node=2, source_nodes=[2, 3, 1])
        _check_once(db, fleet, 180)
        assert len(accepted(db)) == 16 * 60
    finally:
        stop(gw)


def test_bad_source_url_is_a_clear_error(tmp_path: Path) -> None:
    out = surge(
        "gateway",
        "run",
        "--db",
        str(tmp_path / "gw.db"),
        "--source",
        "http://127.0.0.1:5672/",
        "--duration",
        "1",
        check=False,
    )
    assert out.returncode != 0
    assert "not an amqp:// or amqps:// URL" in out.stderr + out.stdout


def test_unreachable_queue_is_logged_and_retried_without_a_crash(rabbit: RabbitCluster, tmp_path: Path) -> None:
    """A --source nobody listens on: a log line naming it at every retry, no exit, a clean stop."""
    db = tmp_path / "gw.db"
    dead = "amqp://127.0.0.1:%d/" % free_port()
    log = open(db.with_suffix(".log"), "a")
    gw = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "gateway",
            "run",
            "--broker",
            rabbit.nodes[0].mqtt_url,
            "--mqtt-version",
            "3.1.1",
            "--source",
            dead,
            "--db",
            str(db),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: gateway_log(db).count("cannot consume surge.reports from %s" % dead) >= 2, 60, "two logged retries"
        )
        assert gw.poll() is None, gateway_log(db)
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(30)
    assert gw.returncode == 0, gateway_log(db)[-3000:]


def test_routing_keys_map_back_to_the_mqtt_topics() -> None:
    # RabbitMQ 3.10's MQTT plugin turns '/' into '.' and leaves a '.' as it is (checked by hand on
    # a node: surge/v1/fl.x/dev.1/report arrived as surge.v1.fl.x.dev.1.report).
    assert topic_of("surge.v1.fleet.dev1.report") == "surge/v1/fleet/dev1/report"
    assert topic_of("surge.v1.fl.x.dev.1.report") == "surge/v1/fl/x/dev/1/report"  # bad_topic, not another device
    assert parse_source(" amqp://a:1/ ,amqps://b:2/") == ["amqp://a:1/", "amqps://b:2/"]
    for bad in ("", "mqtt://a:1", "amqp://:5672/", "amqp://a:x/"):
        try:
            parse_source(bad)
        except ValueError as exc:
            assert "source:" in str(exc)
        else:
            raise AssertionError("accepted %r" % bad)


def test_source_is_a_config_key_checked_at_load(tmp_path: Path) -> None:
    cfg_file = tmp_path / "gw.toml"
    cfg_file.write_text('[gateway]\nsource = "amqp://127.0.0.1:5673/,amqp://127.0.0.1:5674/"\nmqtt_version = "3.1.1"\n')
    assert config.load(str(cfg_file), {}).source == "amqp://127.0.0.1:5673/,amqp://127.0.0.1:5674/"
    try:
        config.load(str(cfg_file), {"source": "127.0.0.1:5673"})
    except config.ConfigError as exc:
        assert "not an amqp:// or amqps:// URL" in str(exc)
    else:
        raise AssertionError("a source without amqp:// was accepted")
