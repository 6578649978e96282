"""Receipts and self-contained proof bundles.

A receipt tells a device where its report sits in an anchored batch.  A proof
bundle carries everything needed to check one report without trusting the
gateway: the exact COSE bytes, the device's public key, the RFC 9162 inclusion
proof, the batch record and where the root was anchored.  ``verify_bundle``
is the offline check; with an RPC endpoint it also reads the root back from
the contract.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator

from surge_protocol import claims as C
from gateway import envelope
from surge_protocol import merkle, topics
from gateway.store import Anchor, Batch, Store, StoredReport
from firmware_shim.cose import COSEError

BUNDLE_FORMAT = "surge-proof-bundle/1"
# v2 (docs/protocol.md §9.2): v1 plus `attested`, the gateway's signed
# attestation of the report.  Written when the report has one; v1 bundles,
# and v2 ones, both verify.
BUNDLE_FORMAT_2 = "surge-proof-bundle/2"
_V1_FIELDS = frozenset(
    {
        "format",
        "report",
        "device",
        "public_key",
        "leaf_index",
        "tree_size",
        "proof",
        "batch",
        "chain",
        "gateway_signature",
    }
)

Publish = Callable[[str, bytes], None]


class BundleError(Exception):
    """A bundle that does not verify; the message says which check failed."""


def anchor_fields(anchor: Anchor) -> dict[str, Any]:
    """Where a batch was anchored: the ``chain`` object of receipts and bundles."""
    return {
        "chain_id": anchor.chain_id,
        "contract": anchor.contract,
        "gateway_address": anchor.gateway_address,
        "tx_hash": anchor.tx_hash.hex() if anchor.tx_hash else None,
        "block_number": anchor.block_number,
    }


def attestation_message(batch: Batch, chain: dict[str, Any]) -> bytes:
    """What the gateway signs at confirmation: canonical JSON of batch record and chain fields.

    The report, proof and tree size are checked by hashes and the device's
    signature; this signature covers the rest of a bundle, so no byte of it
    can change unnoticed.
    """
    return canonical({"batch": batch.record(), "chain": chain})


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def receipts(
    store: Store, batch: Batch, anchor: Anchor, leaves: list[StoredReport] | None = None
) -> Iterator[tuple[str, str, bytes]]:
    """(device fleet, device id, receipt JSON) for every report of a confirmed batch, in leaf order.

    One receipt per report, so the text is put together from its parts: what
    the whole batch shares is encoded once (the same bytes as ``json.dumps``
    of the receipt object, tests/test_receipts_json.py).
    """
    assert anchor.tx_hash is not None
    if leaves is None:
        leaves = store.batch_leaves(batch.seq)
    hashes = [merkle.leaf_hash(r.cose) for r in leaves]
    tree = merkle.MerkleTree(hashes)
    if tree.root != batch.root:
        raise RuntimeError("batch %d: stored reports do not hash to the recorded root" % batch.seq)
    devices = store.batch_devices(batch.seq)
    shared = json.dumps(
        {
            "root": batch.root.hex(),
            "gateway_id": batch.gateway_id,
            "chain": anchor_fields(anchor),
            "gateway_signature": anchor.attestation.hex() if anchor.attestation else None,
        },
        separators=(",", ":"),
    )
    head = (
        '{"v":1,"status":"confirmed","device":%s,"boot":%d,"seq":%d,"leaf_hash":"%s","batch_seq":'
        + str(batch.seq)
        + ',"leaf_index":%d,"tree_size":'
        + str(batch.size)
        + ',"proof":[%s],'
        + shared[1:].replace("%", "%%")
    )
    for rep, leaf, proof in zip(leaves, hashes, tree.proofs()):
        dev = devices.get(rep.device_id)
        text = head % (
            json.dumps(rep.device_id),
            rep.boot,
            rep.seq,
            leaf.hex(),
            rep.leaf_index,
            ",".join(['"%s"' % p.hex() for p in proof]),
        )
        yield dev[0] if dev else "unknown", rep.device_id, text.encode()


def batch_event(store: Store, batch: Batch, event: str, publish: Publish, anchor: Anchor | None = None) -> None:
    """A `closed`, `confirmed` or `reorged` event on the batches topic of each fleet in the batch."""
    per_fleet = store.batch_fleet_counts(batch.seq)
    body: dict[str, Any] = {"v": 1, "event": event, "batch": batch.record()}
    if anchor is not None:
        body["chain"] = anchor_fields(anchor)
        if event == "confirmed":
            body["gateway_signature"] = anchor.attestation.hex() if anchor.attestation else None
    for fleet, n in sorted(per_fleet.items()):
        publish(topics.batches(fleet), json.dumps(dict(body, fleet_reports=n), separators=(",", ":")).encode())


def publish_confirmed(
    store: Store, batch: Batch, anchor: Anchor, publish: Publish, leaves: list[StoredReport] | None = None
) -> int:
    """Send each device its receipt and the fleet a batch event; returns receipts sent."""
    n = 0
    for fleet, device_id, text in receipts(store, batch, anchor, leaves):
        publish(topics.topic(fleet, device_id, "receipt"), text)
        n += 1
    batch_event(store, batch, "confirmed", publish, anchor)
    return n


def build_bundle(store: Store, device_id: str, boot: int, seq: int) -> dict[str, Any]:
    """The proof bundle of one report; raises BundleError if it is not anchored yet."""
    rep = store.report(device_id, boot, seq)
    if rep is None:
        raise BundleError("no accepted report from device %s with boot %d seq %d" % (device_id, boot, seq))
    if rep.batch_seq is None or rep.leaf_index is None:
        raise BundleError("report is not in a batch yet; try again after the next batch closes")
    batch = store.batch(rep.batch_seq)
    anchor = store.confirmed_anchor(rep.batch_seq)
    if batch is None or anchor is None or anchor.tx_hash is None:
        raise BundleError("batch %d is not confirmed on chain yet" % rep.batch_seq)
    from gateway import rotation

    # The key that signed this report: the device's current one, or one it rotated
    # away from (protocol §3.1); the bundle names that key's id.
    public = rotation.key_for_kid(store, device_id, bytes(rep.cose[8:16]))
    if public is None:
        raise BundleError("no key of device %s matches the report's kid" % device_id)
    tree = merkle.MerkleTree([merkle.leaf_hash(r.cose) for r in store.batch_leaves(batch.seq)])
    from gateway.attest import attested_json

    attested = attested_json(store, [rep.id]).get(rep.id)
    doc = {
        "format": BUNDLE_FORMAT if attested is None else BUNDLE_FORMAT_2,
        "report": rep.cose.hex(),
        "device": C.device_id(public),
        "public_key": public.hex(),
        "leaf_index": rep.leaf_index,
        "tree_size": batch.size,
        "proof": [p.hex() for p in tree.proof(rep.leaf_index)],
        "batch": batch.record(),
        "chain": anchor_fields(anchor),
        "gateway_signature": anchor.attestation.hex() if anchor.attestation else None,
    }
    if attested is not None:
        doc["attested"] = json.loads(attested)
    return doc


# -- strict parsing, shared by proof bundles, reward proofs and epoch files ----------


def hex_field(doc: dict[str, Any], key: str, size: int | None, error: type[Exception]) -> bytes:
    """``doc[key]`` decoded from hex (of ``size`` bytes if given), else ``error`` naming the field."""
    try:
        raw = bytes.fromhex(doc[key])
    except (KeyError, TypeError, ValueError):
        raise error("field %r missing or not hex" % key) from None
    if size is not None and len(raw) != size:
        raise error("field %r must be %d bytes" % (key, size))
    return raw


def strict_json(raw: bytes, error: type[Exception], name: str = "") -> Any:
    """JSON of UTF-8 ``raw``, refusing duplicate keys (two readers could see two documents):
    ``error`` says "duplicate field 'k'" or "<name> is not JSON: why"."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise error("duplicate field %r" % k)
            out[k] = v
        return out

    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=pairs)
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, error):
            raise
        raise error("%s is not JSON: %s" % (name, exc) if name else "not JSON: %s" % exc) from None


def recover_signer(message: bytes, signature: bytes) -> str | None:
    """The address whose EIP-191 signature over ``message`` this is, or None if malformed."""
    from eth_account import Account
    from eth_account.messages import encode_defunct

    try:
        return str(Account.recover_message(encode_defunct(primitive=message), signature=signature))
    except Exception:  # malformed signature values: the check fails, not the program
        return None


def _hex(doc: dict[str, Any], key: str, size: int | None = None) -> bytes:
    return hex_field(doc, key, size, BundleError)


def verify_bundle(doc: Any) -> dict[str, Any]:
    """Check a bundle offline; returns a summary or raises BundleError naming the failed check."""
    if not isinstance(doc, dict) or doc.get("format") not in (BUNDLE_FORMAT, BUNDLE_FORMAT_2):
        raise BundleError("not a %s or %s file" % (BUNDLE_FORMAT, BUNDLE_FORMAT_2))
    v2 = doc["format"] == BUNDLE_FORMAT_2
    report = _hex(doc, "report")
    public = _hex(doc, "public_key", 32)
    if C.device_id(public) != doc.get("device"):
        raise BundleError("device %r is not derived from public_key" % doc.get("device"))
    try:
        env = envelope.parse(report)
    except COSEError as exc:
        raise BundleError("report: %s" % exc) from None
    if env.kid != C.kid(public):
        raise BundleError("report kid does not belong to public_key")
    if not envelope.verify(env, public):
        raise BundleError("report signature does not verify with public_key")
    batch = doc.get("batch")
    if not isinstance(batch, dict):
        raise BundleError("field 'batch' missing")
    root = _hex(batch, "root", 32)
    index, size = doc.get("leaf_index"), doc.get("tree_size")
    if not isinstance(index, int) or not isinstance(size, int) or size != batch.get("size"):
        raise BundleError("leaf_index/tree_size missing or tree_size differs from the batch size")
    proof_hex = doc.get("proof")
    if not isinstance(proof_hex, list):
        raise BundleError("field 'proof' missing")
    try:
        proof = [bytes.fromhex(p) for p in proof_hex]
    except (TypeError, ValueError):
        raise BundleError("proof entries must be hex") from None
    if not merkle.verify_inclusion(merkle.leaf_hash(report), index, size, proof, root):
        raise BundleError("inclusion proof does not lead from the report to the batch root")
    chain = doc.get("chain")
    if not isinstance(chain, dict) or not isinstance(chain.get("chain_id"), int):
        raise BundleError("field 'chain' missing")
    signer = _recover(canonical({"batch": batch, "chain": chain}), _hex(doc, "gateway_signature", 65))
    if signer is None or signer.lower() != str(chain.get("gateway_address", "")).lower():
        raise BundleError("gateway signature over the batch record and chain fields does not match gateway_address")
    extra = set(doc) - (_V1_FIELDS | {"attested"} if v2 else _V1_FIELDS)
    if extra:
        raise BundleError("unknown fields %s" % ", ".join(sorted(extra)))
    claims = C.named(env.claims)
    attested = None
    if v2:
        from gateway import attest

        try:
            attested = attest.verify(
                doc.get("attested"),
                report,
                claims.get("bootcount"),
                claims.get("seq"),
                str(chain.get("gateway_address", "")),
            )
        except attest.AttestError as exc:
            raise BundleError(str(exc)) from None
    return {
        "device": doc["device"],
        "boot": claims.get("bootcount"),
        "seq": claims.get("seq"),
        "batch_seq": batch.get("batch_seq"),
        "root": root.hex(),
        "leaf_index": index,
        "tree_size": size,
        "chain_id": chain["chain_id"],
        "contract": chain.get("contract"),
        "tx_hash": chain.get("tx_hash"),
        "claimed": {k: claims.get(k) for k in ("bw_up", "storage_total")},
        "attested": attested,
    }


_recover = recover_signer  # gateway/attest.py's name for it


def check_on_chain(doc: dict[str, Any], rpc: str) -> None:
    """Read the batch root back from the contract over JSON-RPC."""
    from web3 import Web3
    from web3.providers.rpc import HTTPProvider

    from gateway.chain.artifacts import load_artifact

    chain, batch = doc["chain"], doc["batch"]
    try:
        w3 = Web3(HTTPProvider(rpc, request_kwargs={"timeout": 10}))
        if int(w3.eth.chain_id) != chain["chain_id"]:
            raise BundleError("RPC endpoint is chain %d, the bundle says %d" % (w3.eth.chain_id, chain["chain_id"]))
        contract = w3.eth.contract(
            address=Web3.to_checksum_address(chain["contract"]), abi=load_artifact("SurgeAnchor").abi
        )
        onchain = bytes(
            contract.functions.rootOf(Web3.to_checksum_address(chain["gateway_address"]), batch["batch_seq"]).call()
        )
    except BundleError:
        raise
    except Exception as exc:
        raise BundleError("cannot read the root from %s: %s" % (rpc, type(exc).__name__)) from None
    if onchain != bytes.fromhex(batch["root"]):
        raise BundleError("root on chain (%s) differs from the bundle's batch root" % onchain.hex())


def parse_bundle(raw: bytes, name: str = "bundle") -> dict[str, Any]:
    doc = strict_json(raw, BundleError, name)
    if not isinstance(doc, dict):
        raise BundleError("%s is not a proof bundle" % name)
    return doc


def load_bundle(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise BundleError("cannot read %s: %s" % (path, exc.strerror)) from None
    return parse_bundle(raw, path)
