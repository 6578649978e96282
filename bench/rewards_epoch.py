"""Bench group 11: closing a reward epoch and the size of a reward proof, against fleet size.

    python -m bench.rewards_epoch --devices 10000      # one size, printed
    python -m bench.run --only 11 [--smoke]             # as part of `make bench` (10k and 100k; smoke 1k, 10k)

The store is built directly in SQLite (enrolling and signing a million
devices through MQTT would measure ingest, which group 1 does): N devices,
each with its own owner address (one leaf per device: the worst case for the
tree), one report each in confirmed batches of 10,000, every report attested.
The reports are copies of one real signed report under N device ids: the
closer reads each report's `interval` claim and never its signature.

Measured: the closer's whole `close` (read reports and attestations, apply
the formula, sign and write the epoch file in one transaction), the epoch
file's size, `recompute` of that file (what an integrator runs), and the
reward proof of one owner (hashes in its path, bytes as JSON) against the
32 x ceil(log2 N) bytes of a plain Merkle path (INCENTIVES.md).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

BATCH = 10_000
T0 = 1_800_000_000.0
EPOCH_S = 3600
SMOKE_DEVICES = (1_000, 10_000)
# 1M devices take about 5 minutes and 6 GB (docs/performance.md): run them with --devices 1000000,
# outside `make bench`, which must stay under 10 minutes.
FULL_DEVICES = (10_000, 100_000)


def owner(i: int) -> str:
    from gateway.rewards.epoch import checksum_owner

    addr = checksum_owner("0x%040x" % (0xB0000000 + i))
    assert addr is not None
    return addr


def build_store(db: Path, n: int) -> Any:
    """A gateway store holding one confirmed epoch window of n attested reports from n devices."""
    import hashlib

    from agent import keyfile, report
    from surge_protocol import merkle
    from gateway.chain import ChainKey
    from gateway.receipts import canonical
    from gateway.store import Store

    key = keyfile.generate()
    cose = report.sign_report(
        key.secret,
        key.public,
        report.build_claims(
            seq=0,
            bootcount=1,
            uptime=10,
            interval=EPOCH_S,
            prev=None,
            storage=(8 << 30, 1 << 30),
            net=(1, 2),
            bw=(1 << 20, 2 << 20),
            rssi=-60,
        ),
    )
    gw = ChainKey.generate()
    sig = gw.sign_message(b"bench")  # the closer never checks attestation signatures it wrote itself
    st = Store(db)
    ids = ["%016x" % i for i in range(n)]
    owners = [owner(i) for i in range(n)]  # EIP-55, as enrollment stores them
    at = T0 + 10
    st.db.execute("BEGIN")
    st.db.executemany(
        "INSERT INTO devices(device_id, pubkey, board, fleet, owner, enrolled_at) VALUES "
        "(?, ?, 'rpi-4', 'bench', ?, ?)",
        ((d, hashlib.sha256(d.encode()).digest(), o, T0) for d, o in zip(ids, owners)),
    )
    st.db.executemany(
        "INSERT INTO reports(id, device_id, boot, seq, received_at, cose, batch_seq, leaf_index) "
        "VALUES (?, ?, 1, 0, ?, ?, ?, ?)",
        ((i + 1, d, at, cose, i // BATCH + 1, i % BATCH) for i, d in enumerate(ids)),
    )
    st.db.executemany(
        "INSERT INTO attestations(report_id, device_id, boot, seq, bw_up, storage_bytes, flags, body, "
        "signature, at) VALUES (?, ?, 1, 0, ?, ?, '', ?, ?, ?)",
        (
            (i + 1, d, (1 + i % 7) << 20, (1 + i % 13) << 30, canonical({"device": d}).decode(), sig, at)
            for i, d in enumerate(ids)
        ),
    )
    leaf = merkle.leaf_hash(cose)
    prev = bytes(32)
    for b in range(0, n, BATCH):
        size = min(BATCH, n - b)
        root = merkle.MerkleTree([leaf] * size).root
        st.db.execute(
            "INSERT INTO batches(seq, gateway_id, root, size, first_at, last_at, prev_root, closed_at, "
            "state) VALUES (?, 'gw-bench', ?, ?, ?, ?, ?, ?, 'confirmed')",
            (b // BATCH + 1, root, size, at, at, prev, at),
        )
        prev = root
    st.db.execute("COMMIT")
    return st, gw


def measure(n: int, work: Path) -> dict[str, Any]:
    from gateway.rewards import epoch as E
    from gateway.rewards import formula as F
    from gateway.rewards.closer import EpochCloser
    from gateway.rewards.statement import reward_proof

    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    st, gw = build_store(work / ("epoch-%d.db" % n), n)
    setup = time.perf_counter() - t
    closer = EpochCloser(st, "gw-bench", gw.address, F.Formula(budget=10**24), EPOCH_S, gw.sign_message)
    window = closer.next_window()
    assert window is not None and closer.ready(window, T0 + 2 * EPOCH_S)
    t = time.perf_counter()
    ep = closer.close(window, T0 + 2 * EPOCH_S)
    close_s = time.perf_counter() - t
    assert ep is not None and ep.leaves == n
    t = time.perf_counter()
    diffs = E.recompute(ep.file)
    recompute_s = time.perf_counter() - t
    assert diffs == [], diffs
    t = time.perf_counter()
    proof = reward_proof(st, owner(n // 2))
    proof_s = time.perf_counter() - t
    st.close()
    return {
        "devices": n,
        "setup_s": setup,
        "close_s": close_s,
        "file_bytes": len(ep.file),
        "recompute_s": recompute_s,
        "proof_hashes": len(proof["proof"]),
        "proof_bytes": 32 * len(proof["proof"]),
        "proof_json_bytes": len(json.dumps(proof, separators=(",", ":"))),
        "statement_proof_s": proof_s,
    }


def group(r: Any, s: Any, work: Path, ctx: dict[str, Any]) -> None:
    from bench.run import SMOKE

    # bench.run may be __main__: compare the sizes, not the class.
    for n in SMOKE_DEVICES if vars(s) == vars(SMOKE) else FULL_DEVICES:
        m = measure(n, work)
        label = "{:,}".format(n)
        r.add(
            "11",
            "Epoch close, %s devices and owners" % label,
            m["close_s"],
            "s",
            target="well within one epoch",
            note="closer.close: read %s attested reports, formula, sign, write the %.1f MB epoch file; "
            "recompute from the file %.1f s" % (label, m["file_bytes"] / 1e6, m["recompute_s"]),
        )
        r.add(
            "11",
            "Epoch file, %s devices" % label,
            m["file_bytes"] / 1e6,
            "MB",
            note="canonical JSON: inputs per device, outputs per owner",
        )
        plain = 32 * math.ceil(math.log2(n))
        r.add(
            "11",
            "Reward proof path, %s owners" % label,
            m["proof_bytes"],
            "bytes",
            "32 x ceil(log2 N) (INCENTIVES.md)",
            plain,
            "bytes",
            note="%d hashes; the whole reward proof is %d bytes of JSON; building it from the stored epoch %.2f s"
            % (m["proof_hashes"], m["proof_json_bytes"], m["statement_proof_s"]),
        )
        for p in work.glob("epoch-*.db*"):
            p.unlink()


def main() -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="surge-bench-epoch-") as tmp:
        m = measure(args.devices, Path(tmp))
    print(json.dumps(m, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
