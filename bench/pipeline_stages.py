"""CPU per report of each pipeline stage, one at a time, on a store of N accepted reports.

    .venv/bin/python -m bench.pipeline_stages [--reports 10000] [--devices 1000]

Attestation (gateway/attest.py), the batch close, reading a batch's leaves,
the receipts and the anchored `verified` copies of one confirmed batch, each
timed with ``time.process_time`` in this process (no broker: the messages are
built, not sent).  Where the end-to-end figure of group 1 spends the
pipeline's share (docs/performance.md, "The end-to-end rate").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
KEY_HEX = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"  # a throwaway test key


def measure(reports: int, devices: int) -> dict[str, float]:
    sys.path.insert(0, str(ROOT / "tests"))
    from gw_helpers import Device  # tests/gw_helpers.py: signed reports as a device makes them

    from surge_protocol import claims as C
    from gateway import receipts
    from gateway.attest import AttestStage
    from gateway.batcher import Batcher
    from gateway.chain import ChainKey
    from gateway.republish import republish_anchored
    from gateway.store import AcceptedRow, Store

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "gw.db"
        st = Store(db)
        devs = [Device(board="rpi-4") for _ in range(devices)]
        for d in devs:
            st.enroll(d.id, d.key.public, d.board, d.fleet, "")
        key = ChainKey.from_hex(KEY_HEX)
        att = AttestStage(Store(db), "bench", key.address, key.sign_message)  # before the reports: it attests them
        t = time.time()
        rows = []
        for i in range(reports):
            d = devs[i % devices]
            data = d.report()
            rows.append(AcceptedRow(d.id, d.boot, d.seq - 1, t, data, False, C.prev_hash(data)))
        st.commit_outcomes(rows, [])

        def timed(name: str, fn: Callable[[], object]) -> None:
            c = time.process_time()
            fn()
            out[name] = (time.process_time() - c) / reports * 1e6

        def attest_all() -> None:
            while att.step():
                pass

        timed("attest", attest_all)
        closed = []
        timed("batch close", lambda: closed.append(Batcher(st, "bench", reports, 10, reports).close(t + 1, reports)))
        batch = closed[0]
        assert batch is not None and batch.size == reports
        aid = st.begin_anchor(batch.seq, 1, "0x" + "00" * 20, key.address)
        st.update_anchor(aid, "submitted", tx_hash=b"\x11" * 32)
        st.update_anchor(aid, "confirmed", block_number=5, block_hash=b"\x22" * 32, attestation=b"\x33" * 65)
        anchor = st.anchor(aid)
        leaves = []
        timed("batch leaves", lambda: leaves.extend(st.batch_leaves(batch.seq)))
        sent: list[int] = []

        def publish(topic: str, payload: bytes) -> None:
            sent.append(len(payload))

        timed("receipts", lambda: receipts.publish_confirmed(st, batch, anchor, publish, leaves))
        timed("anchored verified", lambda: republish_anchored(st, batch, anchor, publish, leaves))
        st.close()
        att.store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", type=int, default=10_000)
    ap.add_argument("--devices", type=int, default=1_000)
    args = ap.parse_args(argv)
    for name, us in measure(args.reports, args.devices).items():
        print("%-18s %6.1f us CPU per report" % (name, us))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
