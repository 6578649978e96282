"""Owners' statements and self-contained reward proofs, and their offline verification.

A reward proof (``surge-reward-proof/1``) lets an owner, or anyone, check one
owner's cumulative amount without trusting the gateway and send the claim:

| member | covered by |
|---|---|
| ``owner``, ``cumulative`` | the leaf: SHA-256(0x00 || owner (20 bytes) || cumulative (uint256 BE)) |
| ``leaf_index``, ``tree_size``, ``proof`` | RFC 9162 inclusion of that leaf in ``epoch.root``; ``tree_size`` = ``epoch.leaves`` |
| ``epoch`` (the epoch file's header) | ``epoch_signature``: the gateway key over its canonical JSON |
| ``chain`` | ``chain_signature``: the gateway key over canonical {"epoch": header, "chain": chain}, made at K confirmations |

So a proof changed anywhere fails to verify.  With ``--rpc`` the root is also
read back from SurgeRewards (``rootOf``/``leavesOf``) with what is already
claimed.
"""

from __future__ import annotations

from typing import Any

from surge_protocol import merkle
from gateway.receipts import canonical, hex_field, strict_json
from gateway.rewards import epoch as E
from gateway.rewards import formula as F
from gateway.rewards.closer import StoredEpoch, epochs, last_epoch, stored_epoch
from gateway.rewards.settler import confirmation_message, confirmed_anchor
from gateway.store import Store

PROOF_FORMAT = "surge-reward-proof/1"
_MEMBERS = {
    "format",
    "owner",
    "cumulative",
    "leaf_index",
    "tree_size",
    "proof",
    "epoch",
    "epoch_signature",
    "chain",
    "chain_signature",
}


class ProofError(Exception):
    """A reward proof (or statement request) that does not hold; the message says which check failed."""


def _owner(owner: str) -> str:
    addr = E.checksum_owner(owner)
    if addr is None:
        raise ProofError("%r is not an EVM address (0x and 40 hex digits); only address owners earn" % owner)
    return addr


def _latest_with(store: Store, owner: str, confirmed_only: bool) -> StoredEpoch | None:
    for e in reversed(epochs(store)):
        if confirmed_only and e.state != "confirmed":
            continue
        return e
    return None


def reward_proof(store: Store, owner: str, epoch: int | None = None) -> dict[str, Any]:
    """The proof of ``owner``'s cumulative amount in ``epoch`` (default: the latest confirmed epoch,
    else the latest closed one, whose proof then has no chain part yet)."""
    owner = _owner(owner)
    if epoch is not None:
        e = stored_epoch(store, epoch)
        if e is None:
            raise ProofError("no reward epoch %d in this gateway's database" % epoch)
    else:
        e = _latest_with(store, owner, True) or last_epoch(store)
        if e is None:
            raise ProofError("no reward epoch has closed yet")
    ef = E.parse(e.file)
    cum = [(o, int(a)) for o, a in ef.record.body["outputs"]["cumulative"]]
    index = next((i for i, (o, _) in enumerate(cum) if o == owner), None)
    if index is None:
        raise ProofError("owner %s has earned nothing up to epoch %d" % (owner, e.epoch))
    tree = E.tree(cum)
    anchor = confirmed_anchor(store, e.epoch) if e.state == "confirmed" else None
    return {
        "format": PROOF_FORMAT,
        "owner": owner,
        "cumulative": str(cum[index][1]),
        "leaf_index": index,
        "tree_size": len(cum),
        "proof": [p.hex() for p in tree.proof(index)],
        "epoch": ef.record.header,
        "epoch_signature": ef.signature.hex(),
        "chain": anchor.chain_fields() if anchor else None,
        "chain_signature": anchor.attestation.hex() if anchor and anchor.attestation else None,
    }


def statement(store: Store, owner: str) -> dict[str, Any]:
    """Devices, epochs, figures and amounts of one owner, with the reward proof of the latest epoch."""
    owner = _owner(owner)
    out_epochs = []
    for e in epochs(store):
        body = E.parse(e.file).record.body
        devices = []
        points = dict((d, p) for d, p in body["outputs"]["points"])
        for d in body["devices"]:
            if d["owner"] != owner:
                continue
            reasons: dict[str, int] = {}
            for _, _, r in d["excluded"]:
                reasons[r] = reasons.get(r, 0) + 1
            devices.append(
                {
                    "device": d["device"],
                    "board": d["board"],
                    "reports": d["reports"],
                    "attested": d["attested"],
                    "storage_bytes": d["storage_bytes"],
                    "bw_up": d["bw_up"],
                    "flags": d["flags"],
                    "challenges": d["challenges"],
                    "points": points.get(d["device"], 0),
                    "excluded": reasons,
                }
            )
        amount = dict(body["outputs"]["amounts"]).get(owner, "0")
        cumulative = dict(body["outputs"]["cumulative"]).get(owner, "0")
        if devices or amount != "0" or cumulative != "0":
            out_epochs.append(
                {
                    "epoch": e.epoch,
                    "start": e.start_ms,
                    "end": e.end_ms,
                    "state": e.state,
                    "devices": devices,
                    "amount": amount,
                    "cumulative": cumulative,
                }
            )
    return {
        "owner": owner,
        "gateway_id": store.meta("gateway_id"),
        "devices": _enrolled(store, owner),
        "epochs": out_epochs,
        "cumulative": out_epochs[-1]["cumulative"] if out_epochs else "0",
        "since_last_epoch": since_last_epoch(store, owner),
        "proof": _proof_or_none(store, owner),
    }


def since_last_epoch(store: Store, owner: str) -> dict[str, Any]:
    """The owner's devices' figures in confirmed batches no epoch covers yet (the open epoch, and
    windows that closed without an epoch because nobody had earned): what they will be paid on."""
    from gateway.rewards.closer import device_inputs

    last = last_epoch(store)
    after = last.last_batch if last is not None else 0
    r = store.db.execute(
        "SELECT MAX(seq) FROM batches WHERE seq > ? AND state IN ('confirmed', 'receipted')", (after,)
    ).fetchone()
    upto = int(r[0]) if r[0] is not None else after
    devices = []
    for d in device_inputs(store, after, upto) if upto > after else []:
        if d.owner != owner:
            continue
        reasons: dict[str, int] = {}
        for _, _, why in d.excluded:
            reasons[why] = reasons.get(why, 0) + 1
        devices.append(
            {
                "device": d.device,
                "board": d.board,
                "reports": d.reports,
                "attested": d.attested,
                "storage_bytes": d.storage_bytes,
                "bw_up": d.bw_up,
                "flags": list(d.flags),
                "excluded": reasons,
            }
        )
    return {"batches": [after + 1, upto] if upto > after else None, "devices": devices}


def _enrolled(store: Store, owner: str) -> list[dict[str, Any]]:
    return [
        {"device": d.device_id, "board": d.board, "fleet": d.fleet, "active": d.active}
        for d in store.devices()
        if E.checksum_owner(d.owner) == owner
    ]


def _proof_or_none(store: Store, owner: str) -> dict[str, Any] | None:
    try:
        return reward_proof(store, owner)
    except ProofError:
        return None


def _hex(doc: dict[str, Any], key: str, size: int | None = None) -> bytes:
    return hex_field(doc, key, size, ProofError)


def verify_proof(doc: Any) -> dict[str, Any]:
    """Offline: the leaf, the proof to the epoch root, the gateway's signatures.  Raises ProofError."""
    if not isinstance(doc, dict) or doc.get("format") != PROOF_FORMAT:
        raise ProofError("not a reward proof (format is not %s)" % PROOF_FORMAT)
    if set(doc) != _MEMBERS:
        raise ProofError("members differ from a reward proof's: %s" % ", ".join(sorted(set(doc) ^ _MEMBERS)))
    owner = doc["owner"]
    if not isinstance(owner, str) or E.checksum_owner(owner) != owner:
        raise ProofError("owner must be an EIP-55 checksummed address")
    cum = doc["cumulative"]
    if not isinstance(cum, str) or not cum.isdigit() or (len(cum) > 1 and cum[0] == "0"):
        raise ProofError("cumulative must be a decimal string")
    header = doc["epoch"]
    if not isinstance(header, dict):
        raise ProofError("field 'epoch' must be the epoch header")
    root = _hex(header, "root", 32)
    index, size = doc["leaf_index"], doc["tree_size"]
    if not isinstance(index, int) or not isinstance(size, int) or size != header.get("leaves"):
        raise ProofError("leaf_index/tree_size missing or tree_size differs from the epoch's leaf count")
    try:
        path = [bytes.fromhex(p) for p in doc["proof"]]
    except (TypeError, ValueError):
        raise ProofError("proof entries must be hex") from None
    if int(cum) > F.UINT256_MAX:
        raise ProofError("cumulative exceeds uint256")
    leaf = merkle.leaf_hash(E.leaf_data(owner, int(cum)))
    if not merkle.verify_inclusion(leaf, index, size, path, root):
        raise ProofError("inclusion proof does not lead from (owner, cumulative) to the epoch root")
    gateway = header.get("gateway_address")
    signer = E.recover(canonical(header), _hex(doc, "epoch_signature", 65))
    if signer is None or not isinstance(gateway, str) or signer.lower() != gateway.lower():
        raise ProofError("epoch_signature over the epoch header is not by the gateway (%s)" % gateway)
    chain = doc["chain"]
    if chain is not None:
        if not isinstance(chain, dict) or str(chain.get("gateway_address", "")).lower() != gateway.lower():
            raise ProofError("chain.gateway_address is not the epoch's gateway")
        signer = E.recover(confirmation_message(header, chain), _hex(doc, "chain_signature", 65))
        if signer is None or signer.lower() != gateway.lower():
            raise ProofError("chain_signature over the epoch header and chain fields is not by the gateway")
    elif doc["chain_signature"] is not None:
        raise ProofError("chain_signature without chain fields")
    return {
        "owner": owner,
        "cumulative": int(cum),
        "epoch": header.get("epoch"),
        "root": root.hex(),
        "leaf_index": index,
        "tree_size": size,
        "gateway_address": gateway,
        "gateway_id": header.get("gateway_id"),
        "chain": chain,
    }


def check_on_chain(doc: dict[str, Any], rpc: str) -> dict[str, Any]:
    """Read the epoch root back from SurgeRewards over JSON-RPC; returns what is claimed and claimable."""
    from web3 import Web3
    from web3.providers.rpc import HTTPProvider

    from gateway.chain.artifacts import load_artifact

    chain, header = doc.get("chain"), doc["epoch"]
    if not chain:
        raise ProofError("the proof's epoch is not confirmed on chain yet (no chain fields); get a newer proof")
    try:
        w3 = Web3(HTTPProvider(rpc, request_kwargs={"timeout": 10}))
        if int(w3.eth.chain_id) != chain["chain_id"]:
            raise ProofError("RPC endpoint is chain %d, the proof says %d" % (w3.eth.chain_id, chain["chain_id"]))
        c = w3.eth.contract(address=Web3.to_checksum_address(chain["contract"]), abi=load_artifact("SurgeRewards").abi)
        gw = Web3.to_checksum_address(chain["gateway_address"])
        onchain = bytes(c.functions.rootOf(gw, header["epoch"]).call())
        leaves = int(c.functions.leavesOf(gw, header["epoch"]).call())
        claimed = int(c.functions.claimed(gw, Web3.to_checksum_address(doc["owner"])).call())
    except ProofError:
        raise
    except Exception as exc:
        raise ProofError("cannot read the epoch root from %s: %s" % (rpc, type(exc).__name__)) from None
    if onchain != bytes.fromhex(header["root"]) or leaves != header["leaves"]:
        raise ProofError("root/leaves on chain (%s, %d) differ from the proof's epoch" % (onchain.hex(), leaves))
    return {"claimed": claimed, "claimable": max(0, int(doc["cumulative"]) - claimed)}


def parse_proof(raw: bytes, name: str = "proof") -> dict[str, Any]:
    doc = strict_json(raw, ProofError, name)
    if not isinstance(doc, dict):
        raise ProofError("%s is not a reward proof" % name)
    return doc


def load_proof(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return parse_proof(f.read(), path)
    except OSError as exc:
        raise ProofError("cannot read %s: %s" % (path, exc.strerror)) from None
