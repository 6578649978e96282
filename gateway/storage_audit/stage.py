"""The storage audit's I/O: an MQTT connection and a thread of its own (docs/protocol.md §10).

Subscribes to every device's ``audit`` topic, hands each message to the
:class:`~gateway.storage_audit.auditor.Auditor` (which commits its outcome)
and only then acknowledges it, and publishes the ``cmd`` messages the
auditor says are due.  Its own client id and connection, like the
publisher's (gateway/republish.py), so that plotting and challenges never
wait behind report ingest or receipts, and its own database connection.

A bad message or a failing pass is logged and counted, never the end of
the thread; a lost broker is retried with backoff, and on reconnect the
open challenges get a fresh deadline (the gateway's outage is not the
device's fault).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterator

from gateway.config import GatewayConfig
from gateway.mqtt_client import Connection, MQTTError, backoff_delays
from gateway.storage_audit.auditor import AuditSettings, Auditor, CountFn
from gateway.storage_audit.standing import WINDOW_META
from gateway.store import Store
from surge_protocol import topics

log = logging.getLogger("surge.gateway.audit")

AUDIT_FILTER = topics.every_device("audit")
SESSION_EXPIRY_S = 7 * 86400
POLL_S = 0.05


def settings_from(cfg: GatewayConfig) -> AuditSettings:
    return AuditSettings(
        plot_bytes=cfg.audit_plot_kib * 1024,
        plot_bytes_small=cfg.audit_plot_kib_small * 1024,
        k=cfg.audit_k,
        interval_s=cfg.audit_interval_s,
        deadline_s=cfg.audit_deadline_s,
        retries=cfg.audit_retries,
        window_s=cfg.audit_window_s,
        blocks_per_s=cfg.audit_blocks_per_s,
    )


class AuditStage:
    def __init__(
        self,
        cfg: GatewayConfig,
        gateway_id: str,
        on_count: CountFn | None = None,
        settings: AuditSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or settings_from(cfg)
        self.store = Store(cfg.db)
        # Every reader of the standing (the attestation, rewards) uses this window.
        self.store.set_meta(WINDOW_META, repr(self.settings.window_s))
        self.auditor = Auditor(self.store, self.settings, on_count)
        self.clock = clock
        host, port, tls = cfg.broker_host_port()
        self.host, self.port = host, port
        v5 = cfg.mqtt_version == "5"
        self.conn = Connection(
            host,
            port,
            cfg.client_id(gateway_id, "audit"),
            version=cfg.mqtt_version,
            username=cfg.username,
            password=cfg.password,
            tls=tls,
            ca_file=cfg.broker_ca,
            keepalive=30,
            clean_start=False,
            session_expiry=SESSION_EXPIRY_S if v5 else 0,
            receive_maximum=100 if v5 else None,
            max_packet_size=4096 if v5 else None,
        )
        self.stopping = threading.Event()
        self.connected = threading.Event()
        self.thread = threading.Thread(target=self._run, name="surge-audit", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout)
        try:
            self.auditor.flush_counts()
        except Exception:
            log.exception("could not save the last storage audit counts")

    def _run(self) -> None:
        delays: Iterator[float] | None = None
        failing = False
        while not self.stopping.is_set():
            try:
                self.conn.connect()
                self.conn.subscribe([(AUDIT_FILTER, 1)])
                self.conn.resend_unacked()
                self.connected.set()
                delays = None
                self._send(self.auditor.resume(self.clock()))
                while not self.stopping.is_set():
                    failing = self._pass(failing)
                self.conn.disconnect()
                return
            except (MQTTError, OSError) as exc:
                self.connected.clear()
                self.conn.close()
                if self.stopping.is_set():
                    return
                if delays is None:
                    log.warning("storage audit lost the broker at %s:%d (%s); reconnecting", self.host, self.port, exc)
                    delays = backoff_delays(1, 30)
                self.stopping.wait(next(delays))

    def _pass(self, failing: bool) -> bool:
        """One poll and tick; True while passes fail (logged once per episode)."""
        incoming = self.conn.poll(POLL_S)
        try:
            ids = []
            for m in incoming:
                try:
                    self.auditor.on_message(m.topic, m.payload, self.clock())
                except Exception:
                    # Acknowledged all the same, so it cannot come back for ever; what
                    # it carried is not lost: an unanswered challenge is sent again at
                    # its deadline, an unacknowledged block after it.
                    log.exception("storage audit message on %s failed", m.topic)
                    self.auditor.count_error(m.topic)
                if m.packet_id:
                    ids.append(m.packet_id)
            self.conn.ack(ids)
            self._send(self.auditor.tick(self.clock()))
        except (MQTTError, OSError):
            raise
        except Exception:
            # A database error (full disk) must not end the thread; the next pass retries.
            if not failing:
                log.exception("storage audit pass failed; retrying quietly until it succeeds")
            self.stopping.wait(1.0)
            return True
        if failing:
            log.info("storage audit passes succeed again")
        return False

    def _send(self, messages: list[tuple[str, bytes]]) -> None:
        if messages:
            self.conn.publish([(t, p, False) for t, p in messages])
