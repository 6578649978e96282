"""`surge gateway ...`, `surge proof` and `surge verify` (CPython, gateway extra)."""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import time
from typing import Any

import boards
from surge_protocol import claims as C
from agent import keyfile
from agent.cli import CLIError
from gateway import config as gwconfig
from gateway import receipts
from gateway.store import Store, StoreError

FLEET_RE = re.compile(r"^[a-z0-9-]{1,32}$")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log shippers expect."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str, as_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if as_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _open_store(path: str) -> Store:
    try:
        return Store(path)
    except StoreError as exc:
        raise CLIError(str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    overrides = {
        k: getattr(args, k)
        for k in (
            "broker",
            "username",
            "password_file",
            "broker_ca",
            "db",
            "chain",
            "contract",
            "keystore",
            "gateway_id",
            "batch_size",
            "batch_seconds",
            "batch_max",
            "confirmations",
            "anchor_timeout_s",
            "metrics_port",
            "share_group",
            "max_report_bytes",
            "node",
            "rate_limit_per_s",
            "rate_burst",
            "commit_group",
            "pipeline_nice",
            "log_level",
            "mqtt_version",
            "probe_rate_per_s",
            "probe_burst",
            "source",
        )
    }
    if args.no_republish:
        overrides["republish"] = False
    try:
        cfg = gwconfig.load(args.config, overrides)
    except gwconfig.ConfigError as exc:
        raise CLIError(str(exc)) from None
    setup_logging(cfg.log_level, args.log_json)
    from gateway.chain import ChainError
    from gateway.service import Gateway

    try:
        gw = Gateway(cfg, log_json=args.log_json)
    except (ChainError, StoreError) as exc:
        raise CLIError(str(exc)) from None

    def stop(signum: int, frame: Any) -> None:
        gw.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    gw.run(args.duration)
    return gw.exit_code


def _pubkey_from(args: argparse.Namespace) -> bytes:
    if args.pubkey:
        try:
            pub = bytes.fromhex(args.pubkey)
        except ValueError:
            raise CLIError("--pubkey must be hex") from None
        if len(pub) != 32:
            raise CLIError("--pubkey must be 32 bytes (64 hex characters)")
        return pub
    if args.key_file:
        return keyfile.load_public(args.key_file)
    raise CLIError("give --pubkey HEX, --key-file FILE or --from FILE")


def enroll_owner(owner: str) -> tuple[str, str | None]:
    """(owner as stored, warning): an EVM address checked and kept EIP-55, a label kept as given but
    warned about (it earns no rewards); something that looks like an address but is not one is refused
    (gateway/rewards/epoch.py enrollment_owner, shared with `surge flash --gateway-db`)."""
    from gateway.rewards.epoch import OwnerError, enrollment_owner

    try:
        return enrollment_owner(owner)
    except OwnerError as exc:
        raise CLIError("--owner: %s" % exc) from None


def enroll_one(store: Store, pub: bytes, board: str, fleet: str, owner: str) -> str:
    try:
        boards.load(board)
    except boards.BoardError as exc:
        raise CLIError("--board: %s (see `surge boards list`)" % exc) from None
    if not FLEET_RE.match(fleet):
        raise CLIError("--fleet must be 1-32 characters of a-z, 0-9 and '-', got %r" % fleet)
    from gateway import rotation

    if rotation.is_retired(store, pub):
        raise CLIError(
            "key %s was retired by a key rotation; a retired key cannot be enrolled again" % C.device_id(pub)
        )
    owner = enroll_owner(owner)[0]
    try:
        dev = store.enroll(C.device_id(pub), pub, board, fleet, owner)
    except StoreError as exc:
        raise CLIError(str(exc)) from None
    return dev.device_id


def _enroll(args: argparse.Namespace) -> int:
    store = _open_store(args.db)
    if args.from_file:
        try:
            with open(args.from_file) as f:
                doc = json.load(f)
            entries = doc if isinstance(doc, list) else [doc]
            todo = [
                (
                    bytes.fromhex(e["public_key"]),
                    e.get("board") or args.board,
                    e.get("fleet") or args.fleet,
                    e.get("owner", args.owner or ""),
                )
                for e in entries
            ]
        except OSError as exc:
            raise CLIError("cannot read %s: %s" % (args.from_file, exc.strerror)) from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CLIError("%s is not an enrollment file (%s)" % (args.from_file, exc)) from None
    else:
        if not args.board or not args.fleet:
            raise CLIError("--board and --fleet are required")
        todo = [(_pubkey_from(args), args.board, args.fleet, args.owner or "")]
    for pub, board, fleet, owner in todo:
        if len(pub) != 32 or not board or not fleet:
            raise CLIError("enrollment entries need a 32-byte public_key, a board and a fleet")
        device_id = enroll_one(store, pub, board, fleet, owner)
        print("enrolled %s (board %s, fleet %s)" % (device_id, board, fleet))
        warning = enroll_owner(owner)[1]
        if warning:
            print("note: %s" % warning)
    return 0


def _devices(args: argparse.Namespace) -> int:
    store = _open_store(args.db)
    stats = store.device_stats()
    rows: list[dict[str, Any]] = []
    for d in store.devices():
        reports, gaps, seen = stats.get(d.device_id, (0, 0, None))
        rows.append(
            {
                "device_id": d.device_id,
                "board": d.board,
                "fleet": d.fleet,
                "owner": d.owner,
                "public_key": d.pubkey.hex(),
                "status": "active" if d.active else "revoked",
                "reports": reports,
                "gaps": gaps,
                "last_seen": seen,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        "%-16s  %-13s  %-12s  %-7s  %8s  %5s  %s"
        % ("DEVICE", "BOARD", "FLEET", "STATUS", "REPORTS", "GAPS", "LAST SEEN")
    )
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["last_seen"])) if r["last_seen"] else "-"
        print(
            "%-16s  %-13s  %-12s  %-7s  %8d  %5d  %s"
            % (r["device_id"], r["board"], r["fleet"], r["status"], r["reports"], r["gaps"], when)
        )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    try:
        dev = _open_store(args.db).revoke(args.device)
    except StoreError as exc:
        raise CLIError(str(exc)) from None
    print("revoked %s" % dev.device_id)
    return 0


def _status(args: argparse.Namespace) -> int:
    from gateway.service import status

    st = status(_open_store(args.db))
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print("gateway %s  (db %s)" % (st["gateway_id"] or "-", st["db"]))
    d = st["devices"]
    print("devices:    %d enrolled, %d active, %d revoked" % (d["enrolled"], d["active"], d["revoked"]))
    print("reports:    %d accepted, %d waiting for a batch" % (st["reports"]["accepted"], st["reports"]["unbatched"]))
    rej = st["rejections"]
    print("rejected:   %s" % (", ".join("%s %d" % kv for kv in sorted(rej.items())) or "none"))
    b = st["batches"]
    print(
        "batches:    %d (%s)" % (b["total"], ", ".join("%s %d" % kv for kv in sorted(b["by_state"].items())) or "none")
    )
    a = st["last_confirmed_anchor"]
    print(
        "anchored:   %s"
        % ("batch %d in block %s, tx %s" % (a["batch_seq"], a["block_number"], a["tx_hash"]) if a else "nothing yet")
    )
    att = st.get("attestations")
    if att is not None:
        print(
            "attested:   %d reports, %d with a measured bw_up; flags: %s"
            % (att["reports"], att["bw_measured"], ", ".join("%s %d" % kv for kv in att["flags"].items()) or "none")
        )
        for fleet, fa in (att.get("fleets") or {}).items():
            print(
                "attested %s: %d reports, %d with a measured bw_up; flags: %s"
                % (
                    fleet,
                    fa["reports"],
                    fa["bw_measured"],
                    ", ".join("%s %d" % kv for kv in fa["flags"].items()) or "none",
                )
            )
    for fleet, pc in sorted((st.get("probes") or {}).items()):
        print(
            "probes %s: runs %s; chunks %s"
            % (
                fleet,
                ", ".join("%s %d" % kv for kv in pc["runs"].items()) or "none",
                ", ".join("%s %d" % kv for kv in pc["chunks"].items()) or "none",
            )
        )
    for fleet, counts in sorted((st.get("storage_audit") or {}).items()):
        # docs/operators.md, storage audit: challenge outcomes, plot blocks, dropped messages.
        ch = ("sent", "retried", "passed", "failed", "timed_out")
        print(
            "storage %s: challenges %s; blocks stored %d; dropped %s"
            % (
                fleet,
                ", ".join("%s %d" % (k, counts.get(k, 0)) for k in ch),
                counts.get("blocks_stored", 0),
                ", ".join(
                    "%s %d" % kv
                    for kv in sorted(counts.items())
                    if kv[0] not in ch and kv[0] not in ("blocks_sent", "blocks_stored")
                )
                or "none",
            )
        )
    return 0


def _acl(args: argparse.Namespace) -> int:
    from gateway import acl

    tls = None
    if args.certfile or args.keyfile or args.cafile:
        if not (args.certfile and args.keyfile and args.cafile):
            raise CLIError("TLS needs all three of --cafile, --certfile and --keyfile")
        tls = acl.TLSFiles(args.cafile, args.certfile, args.keyfile)
    try:
        counts = acl.generate(_open_store(args.db).devices(), args.out, args.port, tls, args.bind)
    except OSError as exc:
        raise CLIError("cannot write %s: %s" % (args.out, exc.strerror)) from None
    print(
        "wrote %s/{passwords,acl,surge-broker.conf} for %d devices (%d revoked left out); "
        "passwords to hand out are in %s/credentials/"
        % (args.out, counts["devices"], counts["revoked_skipped"], args.out)
    )
    return 0


def _proof(args: argparse.Namespace) -> int:
    store = _open_store(args.db)
    try:
        doc = receipts.build_bundle(store, args.device, args.boot, args.seq)
    except receipts.BundleError as exc:
        raise CLIError(str(exc)) from None
    text = json.dumps(doc, indent=2) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        try:
            with open(args.out, "w") as f:
                f.write(text)
        except OSError as exc:
            raise CLIError("cannot write %s: %s" % (args.out, exc.strerror)) from None
        print(
            "wrote %s (batch %d, leaf %d of %d)"
            % (args.out, doc["batch"]["batch_seq"], doc["leaf_index"], doc["tree_size"])
        )
    return 0


def _verify(args: argparse.Namespace) -> int:
    try:
        doc = receipts.load_bundle(args.file)
        summary = receipts.verify_bundle(doc)
        if args.rpc:
            receipts.check_on_chain(doc, args.rpc)
            summary["on_chain"] = "root matches rootOf(gateway, batch) at %s" % args.rpc
    except receipts.BundleError as exc:
        print("INVALID: %s" % exc)
        return 1
    print(
        "VALID: report %s boot %s seq %s is leaf %d of %d in batch %s (root %s), anchored in tx %s on chain %s"
        % (
            summary["device"],
            summary["boot"],
            summary["seq"],
            summary["leaf_index"],
            summary["tree_size"],
            summary["batch_seq"],
            summary["root"],
            summary["tx_hash"],
            summary["chain_id"],
        )
    )
    if "on_chain" in summary:
        print(summary["on_chain"])
    _print_claimed_and_attested(summary)
    return 0


def _print_claimed_and_attested(summary: dict[str, Any]) -> None:
    """Self-reported and gateway-attested capacity side by side (bundles of format 2 carry the latter)."""
    att = summary.get("attested")
    claimed = summary.get("claimed") or {}

    def fig(v: Any) -> str:
        return "-" if v is None else str(v)

    if att is None:
        print("attested:  none in this bundle (format 1): the figures below are the device's own claims")
        print("  %-14s %14s" % ("", "claimed"))
        for name in ("bw_up", "storage_total"):
            print("  %-14s %14s" % (name, fig(claimed.get(name))))
        return
    ch = att["challenges"]
    print("attested by gateway %s (%s) at %s ms" % (att["gateway_id"], att["gateway_address"], att["at"]))
    print("  %-14s %14s %14s" % ("", "claimed", "attested"))
    print("  %-14s %14s %14s" % ("bw_up B/s", fig(claimed.get("bw_up")), fig(att["bw_up"])))
    print("  %-14s %14s %14s" % ("storage bytes", fig(claimed.get("storage_total")), fig(att["storage_bytes"])))
    print("  challenges: %d passed, %d failed, %d timed out" % (ch["passed"], ch["failed"], ch["timed_out"]))
    print("  flags: %s" % (", ".join(att["flags"]) or "none"))


def add_parser(sub: Any) -> None:
    gw = sub.add_parser("gateway", help="run and administer a gateway").add_subparsers(
        dest="gateway_command", metavar="ACTION"
    )
    run = gw.add_parser("run", help="verify, store, batch and anchor reports")
    run.add_argument("--config", metavar="FILE", help="TOML config; flags override it")
    run.add_argument("--broker", metavar="URL", help="mqtt://host:port (default mqtt://127.0.0.1:1883)")
    run.add_argument("--username", metavar="USER", help="broker username")
    run.add_argument(
        "--password-file", dest="password_file", metavar="FILE", help="file whose first line is the broker password"
    )
    run.add_argument("--broker-ca", dest="broker_ca", metavar="FILE", help="CA certificate for mqtts:// brokers")
    run.add_argument(
        "--db",
        metavar="FILE|URL",
        help="SQLite file (default surge-gateway.db) or postgresql://user@host/db (a cluster)",
    )
    run.add_argument("--chain", metavar="memory|URL", help="'memory' (in-process EVM) or a JSON-RPC URL")
    run.add_argument("--contract", metavar="ADDR", help="SurgeAnchor address on a JSON-RPC chain")
    run.add_argument("--keystore", metavar="FILE", help="encrypted chain key (password in $SURGE_KEYSTORE_PASSWORD)")
    run.add_argument("--gateway-id", dest="gateway_id", metavar="ID", help="default: generated once, kept in the db")
    run.add_argument("--batch-size", dest="batch_size", type=int, metavar="N", help="close a batch at N reports (1000)")
    run.add_argument(
        "--batch-seconds",
        dest="batch_seconds",
        type=float,
        metavar="S",
        help="or when its oldest report is S seconds old (10)",
    )
    run.add_argument(
        "--batch-max",
        dest="batch_max",
        type=int,
        metavar="N",
        help="largest batch; under load a batch grows up to N reports (100000)",
    )
    run.add_argument("--confirmations", type=int, metavar="K", help="blocks before an anchor counts (2)")
    run.add_argument(
        "--anchor-timeout",
        dest="anchor_timeout_s",
        type=float,
        metavar="S",
        help="send an anchor again when its transaction has no receipt after S seconds (120)",
    )
    run.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        metavar="P",
        help="Prometheus /metrics on 127.0.0.1:P (0 = off)",
    )
    run.add_argument("--max-report-bytes", dest="max_report_bytes", type=int, metavar="N", help="(1024)")
    run.add_argument(
        "--rate-limit", dest="rate_limit_per_s", type=float, metavar="R", help="messages per second per device (5)"
    )
    run.add_argument("--rate-burst", dest="rate_burst", type=int, metavar="N", help="burst per device (50)")
    run.add_argument(
        "--probe-rate",
        dest="probe_rate_per_s",
        type=float,
        metavar="R",
        help="bandwidth probe chunks/s per device (100)",
    )
    run.add_argument(
        "--probe-burst", dest="probe_burst", type=int, metavar="N", help="probe chunk burst per device (4096)"
    )
    run.add_argument(
        "--commit-group",
        dest="commit_group",
        type=int,
        metavar="N",
        help="messages verified per store commit at most (500)",
    )
    run.add_argument(
        "--pipeline-nice",
        dest="pipeline_nice",
        type=int,
        metavar="N",
        help="CPU nice value of batching, anchoring and publishing, 0..19 (19: ingest first)",
    )
    run.add_argument(
        "--no-republish", dest="no_republish", action="store_true", help="do not republish verified reports as JSON"
    )
    run.add_argument(
        "--share-group",
        dest="share_group",
        metavar="NAME",
        help="subscribe through $share/NAME/ so several gateways split a fleet",
    )
    run.add_argument(
        "--source",
        metavar="URL[,URL...]",
        help="consume reports from a RabbitMQ cluster's quorum queue, amqp://host:port/ of one or "
        "more nodes (docs/cluster.md); default: the MQTT subscription",
    )
    run.add_argument(
        "--node",
        metavar="NAME",
        help="cluster member name (several gateways on one PostgreSQL db): its own MQTT client ids",
    )
    run.add_argument(
        "--mqtt-version",
        dest="mqtt_version",
        choices=("5", "3.1.1"),
        help="protocol to the broker: 5 (default) or 3.1.1 for brokers without MQTT 5",
    )
    run.add_argument("--log-level", dest="log_level", metavar="LEVEL")
    run.add_argument("--log-json", action="store_true", help="JSON log lines")
    run.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: run until signalled)")
    run.set_defaults(func=_run)

    en = gw.add_parser("enroll", help="enroll a device's public key")
    en.add_argument("--db", required=True, metavar="FILE|URL")
    en.add_argument("--pubkey", metavar="HEX")
    en.add_argument("--key-file", dest="key_file", metavar="FILE", help="read the public key from an agent key file")
    en.add_argument("--from", dest="from_file", metavar="FILE", help="enrollment file written by `surge flash`")
    en.add_argument("--board", metavar="BOARD")
    en.add_argument("--fleet", metavar="NAME")
    en.add_argument(
        "--owner",
        metavar="ADDR",
        help="owner's EVM address (rewards are paid to it; a label that is not an address is kept, but earns nothing)",
    )
    en.set_defaults(func=_enroll)

    dv = gw.add_parser("devices", help="list enrolled devices")
    dv.add_argument("--db", required=True, metavar="FILE|URL")
    dv.add_argument("--json", action="store_true")
    dv.set_defaults(func=_devices)

    rv = gw.add_parser("revoke", help="revoke a device: its reports are rejected from now on")
    rv.add_argument("--db", required=True, metavar="FILE|URL")
    rv.add_argument("device", metavar="DEVICE_ID")
    rv.set_defaults(func=_revoke)

    st = gw.add_parser("status", help="summary of a gateway database")
    st.add_argument("--db", required=True, metavar="FILE|URL")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_status)

    ac = gw.add_parser("acl", help="write Mosquitto password file, ACL and listener config from the registry")
    ac.add_argument("--db", required=True, metavar="FILE|URL")
    ac.add_argument("--out", required=True, metavar="DIR")
    ac.add_argument("--port", type=int, default=8883, help="listener port (default 8883)")
    ac.add_argument("--bind", default="0.0.0.0", help="listener address (default 0.0.0.0)")
    ac.add_argument("--cafile", metavar="FILE", help="CA certificate (enables TLS with the two below)")
    ac.add_argument("--certfile", metavar="FILE", help="broker certificate")
    ac.add_argument("--keyfile", metavar="FILE", help="broker private key")
    ac.set_defaults(func=_acl)

    pr = sub.add_parser("proof", help="export the proof bundle of one report")
    pr.add_argument("--db", required=True, metavar="FILE|URL")
    pr.add_argument("--device", required=True, metavar="ID")
    pr.add_argument("--boot", required=True, type=int, metavar="B")
    pr.add_argument("--seq", required=True, type=int, metavar="S")
    pr.add_argument("--out", required=True, metavar="FILE", help="- for stdout")
    pr.set_defaults(func=_proof)

    vf = sub.add_parser("verify", help="check a proof bundle offline (and on chain with --rpc)")
    vf.add_argument("file", metavar="FILE")
    vf.add_argument("--rpc", metavar="URL", help="also read the root back from the contract")
    vf.set_defaults(func=_verify)
