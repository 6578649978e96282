"""`surge rewards ...`: close, status, epoch, statement, verify, claim, recompute.

Offline commands (status, epoch, statement, verify, recompute) need only the
database or the file; `close` signs with the gateway's chain key; `claim`
and `verify --rpc` talk to a JSON-RPC node.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from agent.cli import CLIError

if TYPE_CHECKING:
    from gateway.store import Store

# Everything else is imported by the command that needs it: every `surge` command (the
# agent's included) loads this module to list its sub-commands, and web3 takes ~1 s to import.


def _store(path: str) -> Store:
    from gateway.store import Store, StoreError

    try:
        return Store(path)
    except StoreError as exc:
        raise CLIError(str(exc)) from None


def _write(path: str, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise CLIError("cannot write %s: %s" % (path, exc.strerror)) from None


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CLIError("cannot read %s: %s" % (path, exc.strerror)) from None


def _close(args: argparse.Namespace) -> int:
    from gateway import config as gwconfig
    from gateway.chain import ChainError, ChainKey, load_chain_key, load_keystore
    from gateway.rewards.closer import EpochCloser
    from gateway.rewards.stage import write_epoch_file

    overrides = {"db": args.db, "keystore": args.keystore}
    try:
        cfg = gwconfig.load(args.config, overrides)
    except gwconfig.ConfigError as exc:
        raise CLIError(str(exc)) from None
    if cfg.rewards is None:
        raise CLIError("the config has no [rewards] table: nothing to close")
    store = _store(cfg.db)
    gateway_id = store.meta("gateway_id")
    if not gateway_id:
        raise CLIError("%s has no gateway id yet (the gateway has never run)" % cfg.db)
    try:
        key: ChainKey = load_keystore(cfg.keystore) if cfg.keystore else load_chain_key()
    except ChainError as exc:
        raise CLIError(str(exc)) from None
    closer = EpochCloser(
        store, gateway_id, key.address, cfg.rewards.formula, cfg.rewards.epoch_seconds, key.sign_message
    )
    closed = closer.step(time.time(), limit=args.max)
    for e in closed:
        if cfg.rewards.epochs_dir:
            write_epoch_file(cfg.rewards.epochs_dir, e)
        print("closed epoch %d: %d leaves, root %s" % (e.epoch, e.leaves, e.root.hex()))
    if not closed:
        window = closer.next_window()
        print(
            "no epoch is due"
            + (
                ""
                if window is None
                else " (next window ends %s)" % time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(window[1] / 1000))
            )
        )
    return 0


def _status(args: argparse.Namespace) -> int:
    from gateway.rewards.closer import epochs

    store = _store(args.db)
    rows = []
    for e in epochs(store):
        h = e.header
        rows.append(
            {
                "epoch": e.epoch,
                "state": e.state,
                "start": e.start_ms,
                "end": e.end_ms,
                "leaves": e.leaves,
                "allocated": h["allocated"],
                "cumulative_total": h["cumulative_total"],
                "root": h["root"],
                "last_batch": e.last_batch,
            }
        )
    if args.json:
        print(json.dumps({"epochs": rows}, indent=2))
        return 0
    if not rows:
        print("no reward epoch has closed yet")
        return 0
    print("%6s  %-9s  %-19s  %7s  %28s  %s" % ("EPOCH", "STATE", "END (UTC)", "LEAVES", "ALLOCATED", "ROOT"))
    for r in rows:
        print(
            "%6d  %-9s  %-19s  %7d  %28s  %s"
            % (
                r["epoch"],
                r["state"],
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["end"] / 1000)),
                r["leaves"],
                r["allocated"],
                r["root"][:16] + "...",
            )
        )
    return 0


def _epoch(args: argparse.Namespace) -> int:
    from gateway.rewards.closer import stored_epoch

    e = stored_epoch(_store(args.db), args.epoch)
    if e is None:
        raise CLIError("no reward epoch %d in %s" % (args.epoch, args.db))
    _write(args.out, e.file)
    if args.out != "-":
        print("wrote %s (epoch %d, %d bytes)" % (args.out, e.epoch, len(e.file)))
    return 0


def _statement(args: argparse.Namespace) -> int:
    from gateway.rewards import statement as S

    try:
        st = S.statement(_store(args.db), args.owner)
    except S.ProofError as exc:
        raise CLIError(str(exc)) from None
    if args.proof_out:
        if st["proof"] is None:
            raise CLIError("owner %s has no reward proof yet (nothing earned in a closed epoch)" % st["owner"])
        _write(args.proof_out, json.dumps(st["proof"], indent=2) + "\n")
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(format_statement(st))
    if args.proof_out:
        print("reward proof: %s" % args.proof_out)
    return 0


def format_statement(st: dict[str, Any]) -> str:
    lines = [
        "owner %s at gateway %s: %d device(s) enrolled, cumulative %s"
        % (st["owner"], st["gateway_id"] or "-", len(st["devices"]), st["cumulative"])
    ]
    for ep in st["epochs"]:
        lines.append(
            "  epoch %d (%s): amount %s, cumulative %s" % (ep["epoch"], ep["state"], ep["amount"], ep["cumulative"])
        )
        for d in ep["devices"]:
            why = ", ".join("%s %d" % kv for kv in sorted(d["excluded"].items())) or "none"
            lines.append(
                "    %s %-10s reports %d, attested %d, storage %d B, bw_up %s B/s, flags %s, points %d, "
                "excluded: %s"
                % (
                    d["device"],
                    d["board"],
                    d["reports"],
                    d["attested"],
                    d["storage_bytes"],
                    d["bw_up"] if d["bw_up"] is not None else "-",
                    ",".join(d["flags"]) or "-",
                    d["points"],
                    why,
                )
            )
    open_ = st.get("since_last_epoch") or {}
    if open_.get("batches"):
        lines.append("  not in an epoch yet (confirmed batches %d..%d):" % tuple(open_["batches"]))
        for d in open_["devices"]:
            why = ", ".join("%s %d" % kv for kv in sorted(d["excluded"].items())) or "none"
            lines.append(
                "    %s %-10s reports %d, attested %d, excluded: %s"
                % (d["device"], d["board"], d["reports"], d["attested"], why)
            )
    if not st["epochs"] and not open_.get("devices"):
        lines.append("  no reports of these devices in a confirmed batch yet")
    return "\n".join(lines)


def _verify(args: argparse.Namespace) -> int:
    from gateway.rewards import statement as S

    try:
        doc = S.load_proof(args.file)
        summary = S.verify_proof(doc)
        onchain = S.check_on_chain(doc, args.rpc) if args.rpc else None
    except S.ProofError as exc:
        print("INVALID: %s" % exc)
        return 1
    print(
        "VALID: owner %s has cumulative %d in epoch %s of gateway %s (%s), leaf %d of %d, root %s"
        % (
            summary["owner"],
            summary["cumulative"],
            summary["epoch"],
            summary["gateway_id"],
            summary["gateway_address"],
            summary["leaf_index"],
            summary["tree_size"],
            summary["root"],
        )
    )
    if summary["chain"] is None:
        print("not yet confirmed on chain: the proof has no chain fields")
    else:
        c = summary["chain"]
        print(
            "published on chain %s at %s in tx %s (block %s)"
            % (c["chain_id"], c["contract"], c["tx_hash"], c["block_number"])
        )
    if onchain is not None:
        print(
            "root matches rootOf(gateway, epoch) at %s; claimed %d, claimable %d"
            % (args.rpc, onchain["claimed"], onchain["claimable"])
        )
    return 0


def _claim(args: argparse.Namespace) -> int:
    from gateway.chain import ChainError, load_keystore
    from gateway.rewards import statement as S
    from gateway.rewards.open import open_rewards_chain

    try:
        doc = S.load_proof(args.file)
        summary = S.verify_proof(doc)
    except S.ProofError as exc:
        raise CLIError("the proof does not verify: %s" % exc) from None
    chain = summary["chain"]
    if chain is None:
        raise CLIError("the proof's epoch is not confirmed on chain yet; get a newer proof (surge rewards statement)")
    try:
        key = load_keystore(args.keystore)
        rewards = open_rewards_chain(args.rpc, key=key, contract=chain["contract"])
        if rewards.chain_id != chain["chain_id"]:
            raise CLIError(
                "%s is chain %d, the proof's epoch is on chain %d" % (args.rpc, rewards.chain_id, chain["chain_id"])
            )
        before = rewards.token_balance(summary["owner"])
        tx, gas = rewards.claim(
            key,
            int(summary["epoch"]),
            summary["owner"],
            summary["cumulative"],
            summary["leaf_index"],
            summary["tree_size"],
            [bytes.fromhex(p) for p in doc["proof"]],
            gateway=summary["gateway_address"],
        )
        after = rewards.token_balance(summary["owner"])
    except ChainError as exc:
        raise CLIError("claim refused: %s" % exc) from None
    print(
        "claimed %d for %s in tx 0x%s (%d gas); balance now %d"
        % (after - before, summary["owner"], tx.hex(), gas, after)
    )
    return 0


def _recompute(args: argparse.Namespace) -> int:
    from gateway.rewards import epoch as E

    raw = _read(args.file)
    previous = _read(args.previous) if args.previous else None
    diffs = E.recompute(raw, previous)
    if diffs:
        print("DIFFERS: %s" % args.file)
        for d in diffs:
            print("  %s" % d)
        return 1
    h = E.parse(raw).record.header
    print(
        "MATCHES: epoch %d of gateway %s recomputed from its inputs byte for byte: %d leaves, root %s, "
        "allocated %s" % (h["epoch"], h["gateway_id"], h["leaves"], h["root"], h["allocated"])
    )
    return 0


def add_parser(sub: Any) -> None:
    rw = sub.add_parser("rewards", help="reward epochs: statements, proofs, claims, recomputation").add_subparsers(
        dest="rewards_command", metavar="ACTION"
    )

    cl = rw.add_parser("close", help="close the epochs that are due (the running gateway does this itself)")
    cl.add_argument("--config", metavar="FILE", required=True, help="gateway TOML config with a [rewards] table")
    cl.add_argument("--db", metavar="FILE", help="override the config's db")
    cl.add_argument("--keystore", metavar="FILE", help="the gateway's chain key (else $SURGE_CHAIN_KEY)")
    cl.add_argument("--max", type=int, default=10, metavar="N", help="close at most N epochs (10)")
    cl.set_defaults(func=_close)

    st = rw.add_parser("status", help="closed epochs and their settlement on chain")
    st.add_argument("--db", required=True, metavar="FILE")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_status)

    ep = rw.add_parser("epoch", help="export an epoch file (inputs, outputs, root, signature)")
    ep.add_argument("epoch", type=int, metavar="N")
    ep.add_argument("--db", required=True, metavar="FILE")
    ep.add_argument("--out", required=True, metavar="FILE", help="- for stdout")
    ep.set_defaults(func=_epoch)

    sm = rw.add_parser("statement", help="an owner's devices, epochs, figures and amounts, and reward proof")
    sm.add_argument("--db", required=True, metavar="FILE")
    sm.add_argument("--owner", required=True, metavar="ADDR")
    sm.add_argument("--proof-out", dest="proof_out", metavar="FILE", help="write the reward proof (for claim/verify)")
    sm.add_argument("--json", action="store_true")
    sm.set_defaults(func=_statement)

    vf = rw.add_parser("verify", help="check a reward proof offline (and on chain with --rpc)")
    vf.add_argument("file", metavar="PROOF")
    vf.add_argument("--rpc", metavar="URL", help="also read the epoch root back from SurgeRewards")
    vf.set_defaults(func=_verify)

    cm = rw.add_parser("claim", help="send the claim of a reward proof (the tokens go to the proof's owner)")
    cm.add_argument("file", metavar="PROOF")
    cm.add_argument("--rpc", required=True, metavar="URL")
    cm.add_argument(
        "--keystore",
        required=True,
        metavar="FILE",
        help="key paying the gas (password in $SURGE_KEYSTORE_PASSWORD); any key may claim",
    )
    cm.set_defaults(func=_claim)

    rc = rw.add_parser("recompute", help="recompute an epoch file's outputs and root from its inputs")
    rc.add_argument("file", metavar="EPOCH_FILE")
    rc.add_argument("--previous", metavar="FILE", help="the epoch file before it: check the cumulative chain too")
    rc.set_defaults(func=_recompute)
