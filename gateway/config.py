"""Gateway configuration: a TOML file, every option also a command-line flag.

Precedence: flag > file > default.  Defaults run a complete gateway on one
machine: a local SQLite file, the in-process EVM, a broker on localhost.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A configuration value is wrong; the message names the field."""


@dataclass(frozen=True)
class GatewayConfig:
    broker: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    broker_ca: str | None = None
    db: str = "surge-gateway.db"
    chain: str = "memory"
    contract: str | None = None
    keystore: str | None = None
    gateway_id: str | None = None
    batch_size: int = 1000
    batch_seconds: float = 10.0
    # Largest batch: under load a batch takes every report that waited behind
    # the anchor in flight, up to this many (gateway/batcher.py); never below
    # batch_size (a larger batch_size raises it).
    batch_max: int = 100_000
    confirmations: int = 2
    anchor_timeout_s: float = 120.0
    metrics_port: int = 0
    share_group: str | None = None
    # Reports from a RabbitMQ cluster's quorum queue instead of the MQTT
    # subscription: amqp://host:port/[,amqp://...] (gateway/source_amqp.py, docs/cluster.md).
    source: str | None = None
    # Cluster (several gateways on one PostgreSQL db, one gateway id): this member's name,
    # which keeps its MQTT client ids (and so its persistent sessions) its own.
    node: str | None = None
    max_report_bytes: int = 1024
    rate_limit_per_s: float = 5.0
    rate_burst: int = 50
    commit_group: int = 500
    republish: bool = True
    # CPU priority of the pipeline process (batching, anchoring, receipts,
    # publishing): 19 = only CPU the ingest process and the broker leave.
    pipeline_nice: int = 19
    log_level: str = "info"
    # "3.1.1" for brokers without MQTT 5 (the demo's embedded amqtt): same
    # persistent session through clean_session=False, no ReceiveMaximum.
    mqtt_version: str = "5"
    # Storage audit (gateway/storage_audit/, docs/operators.md): plots and
    # challenges for every recently reporting device; off unless asked for
    # (docs/operators.md, "Storage audit", says why, and that rewards then pay
    # no storage).
    storage_audit: bool = False
    audit_plot_kib: int = 4096
    audit_plot_kib_small: int = 64
    audit_k: int = 16
    audit_interval_s: float = 600.0
    audit_deadline_s: float = 30.0
    audit_retries: int = 2
    audit_window_s: float = 3600.0
    audit_blocks_per_s: float = 50.0
    # Bandwidth probes checked by the gateway (gateway/probe_check.py, docs/operators.md):
    # per-device token bucket in chunks, and the largest chunk message kept.
    probe_rate_per_s: float = 100.0
    probe_burst: int = 4096
    max_probe_bytes: int = 16384
    # The [rewards] table (gateway/rewards/settings.py); None: no reward epochs.
    rewards: Any = None

    def broker_host_port(self) -> tuple[str, int, bool]:
        return parse_broker(self.broker)

    def client_id(self, gateway_id: str, role: str = "") -> str:
        """MQTT client id of one of this gateway's connections: surge-gw-ID[-NODE][-ROLE]."""
        return "-".join(["surge-gw", gateway_id] + ([self.node] if self.node else []) + ([role] if role else []))


def parse_broker(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of ``mqtt://host:port`` or ``mqtts://host:port``."""
    parts = urlsplit(url if "://" in url else "mqtt://" + url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ConfigError("broker: scheme %r is not mqtt:// or mqtts://" % parts.scheme)
    tls = parts.scheme in ("mqtts", "ssl")
    if not parts.hostname:
        raise ConfigError("broker: no host in %r" % url)
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ConfigError("broker: bad port in %r" % url) from None
    return parts.hostname, port, tls


_POSITIVE = (
    "batch_size",
    "batch_max",
    "commit_group",
    "max_report_bytes",
    "rate_burst",
    "probe_burst",
    "max_probe_bytes",
)


def _read_password(cfg: GatewayConfig) -> GatewayConfig:
    if cfg.password is None and cfg.password_file:
        try:
            with open(cfg.password_file) as f:
                return replace(cfg, password=f.readline().rstrip("\n"))
        except OSError as exc:
            raise ConfigError("password_file %s: %s" % (cfg.password_file, exc.strerror)) from None
    return cfg


def validate(cfg: GatewayConfig) -> GatewayConfig:
    for name in _POSITIVE:
        if getattr(cfg, name) < 1:
            raise ConfigError("%s must be at least 1, got %r" % (name, getattr(cfg, name)))
    if cfg.batch_seconds <= 0:
        raise ConfigError("batch_seconds must be positive, got %r" % cfg.batch_seconds)
    if cfg.anchor_timeout_s <= 0:
        raise ConfigError("anchor_timeout_s must be positive, got %r" % cfg.anchor_timeout_s)
    if cfg.confirmations < 1:
        raise ConfigError("confirmations must be at least 1, got %r" % cfg.confirmations)
    if not 0 <= cfg.metrics_port <= 65535:
        raise ConfigError("metrics_port must be 0 (off) or a TCP port, got %r" % cfg.metrics_port)
    if cfg.rate_limit_per_s <= 0:
        raise ConfigError("rate_limit_per_s must be positive, got %r" % cfg.rate_limit_per_s)
    if cfg.probe_rate_per_s <= 0:
        raise ConfigError("probe_rate_per_s must be positive, got %r" % cfg.probe_rate_per_s)
    if cfg.chain != "memory" and not cfg.chain.startswith(("http://", "https://")):
        raise ConfigError("chain must be 'memory' or an http(s):// JSON-RPC URL")
    if not 0 <= cfg.pipeline_nice <= 19:
        raise ConfigError("pipeline_nice must be 0..19, got %r" % cfg.pipeline_nice)
    if cfg.mqtt_version not in ("5", "3.1.1"):
        raise ConfigError('mqtt_version must be "5" or "3.1.1", got %r' % cfg.mqtt_version)
    _validate_audit(cfg)
    parse_broker(cfg.broker)
    if cfg.source is not None:
        from gateway.source_amqp import parse_source

        try:
            parse_source(cfg.source)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return cfg


def _validate_audit(cfg: GatewayConfig) -> None:
    for name in ("audit_plot_kib", "audit_plot_kib_small"):
        if getattr(cfg, name) < 1:
            raise ConfigError("%s must be at least 1, got %r" % (name, getattr(cfg, name)))
    if not 1 <= cfg.audit_k <= 64:
        raise ConfigError("audit_k must be 1..64, got %r" % cfg.audit_k)
    if not 0 <= cfg.audit_retries <= 10:
        raise ConfigError("audit_retries must be 0..10, got %r" % cfg.audit_retries)
    for name in ("audit_interval_s", "audit_deadline_s", "audit_window_s", "audit_blocks_per_s"):
        if getattr(cfg, name) <= 0:
            raise ConfigError("%s must be positive, got %r" % (name, getattr(cfg, name)))
    if cfg.audit_window_s < cfg.audit_interval_s:
        raise ConfigError(
            "audit_window_s (%r) must be at least audit_interval_s (%r): a window needs a challenge"
            % (cfg.audit_window_s, cfg.audit_interval_s)
        )


def load(path: str | None, overrides: dict[str, Any]) -> GatewayConfig:
    """Read ``path`` (TOML, optional), apply non-None ``overrides``, validate."""
    values: dict[str, Any] = {}
    known = {f.name: f for f in fields(GatewayConfig) if f.name != "rewards"}
    rewards_doc: Any = None
    if path is not None:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as exc:
            raise ConfigError("cannot read config %s: %s" % (path, exc.strerror)) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config %s is not valid TOML: %s" % (path, exc)) from None
        section = dict(doc.get("gateway", doc))
        rewards_doc = section.pop("rewards", None) if "gateway" not in doc else doc.get("rewards")
        for key, value in section.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError("config %s: unknown field %r" % (path, key))
            values[name] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    base = GatewayConfig()
    for name, value in values.items():
        default = getattr(base, name)
        expected = type(default) if default is not None else str
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError("field %r must be %s, got %r" % (name, expected.__name__, value))
        values[name] = value
    if path is not None:
        db = values.get("db")
        # A relative SQLite path is relative to the config file; a postgresql:// URL is left as written.
        if (
            db is not None
            and overrides.get("db") is None
            and not Path(db).is_absolute()
            and not str(db).startswith(("postgresql://", "postgres://"))
        ):
            values["db"] = str(Path(path).parent / db)
    from gateway.rewards import settings as rewards_settings

    try:
        values["rewards"] = rewards_settings.parse(rewards_doc, path)
    except rewards_settings.RewardsConfigError as exc:
        raise ConfigError("config %s: %s" % (path, exc)) from None
    return validate(_read_password(replace(base, **values)))
