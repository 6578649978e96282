"""Helpers for the reward tests.

STAND-IN FOR THE ATTESTATION STAGE: ``attest_reports`` writes `attestations`
rows exactly as the interface says (docs/protocol.md §2.8 `attested`): the
canonical JSON of the `attested` object without its signature in `body`, the
gateway chain key's EIP-191 signature over it in `signature`.  The figures are
what the test says the gateway measured; nothing here reads a device's claims.

It stands in for the gateway's own stages (gateway/probe_listener.py timing a
probe run, gateway/storage_audit/ proving a plot, gateway/attest.py signing)
so that the formula tests can pin exact figures, flags and failed challenges
(a median of 8 GiB, one report left unattested, a flag on one device) that
real agents on a loopback broker cannot be made to produce on demand.  The
real path, with real agents, probes and storage audits, is
tests/test_rewards_attested_e2e.py.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

from gateway.receipts import canonical

Sign = Callable[[bytes], bytes]


def attest_reports(
    db: Path | str,
    gateway_id: str,
    gateway_address: str,
    sign: Sign,
    figures: Callable[[str, int, int], tuple[int | None, int, str] | None],
    failed: Callable[[str], int] = lambda d: 0,
) -> int:
    """Attest every accepted report without an attestation row; returns how many were written.

    ``figures(device, boot, seq)`` -> (bw_up or None, storage_bytes, flags) or None to leave it unattested.
    """
    con = sqlite3.connect(str(db), timeout=30)
    n = 0
    try:
        rows = con.execute(
            "SELECT r.id, r.device_id, r.boot, r.seq, r.cose FROM reports r LEFT JOIN attestations a "
            "ON a.report_id = r.id WHERE a.report_id IS NULL ORDER BY r.id"
        ).fetchall()
        for rid, device, boot, seq, cose in rows:
            fig = figures(device, boot, seq)
            if fig is None:
                continue
            bw, storage, flags = fig
            at = time.time()
            obj = {
                "v": 1,
                "gateway_id": gateway_id,
                "device": device,
                "boot": boot,
                "seq": seq,
                "report_sha256": hashlib.sha256(bytes(cose)).hexdigest(),
                "at": round(at * 1000),
                "bw_up": bw,
                "storage_bytes": storage,
                "challenges": {"passed": 3, "failed": failed(device), "timed_out": 0},
                "flags": sorted(x for x in flags.split(",") if x),
                "gateway_address": gateway_address,
            }
            body = canonical(obj)
            con.execute(
                "INSERT INTO attestations(report_id, device_id, boot, seq, bw_up, storage_bytes, "
                "challenges_passed, challenges_failed, challenges_timed_out, flags, body, signature, at) "
                "VALUES (?, ?, ?, ?, ?, ?, 3, ?, 0, ?, ?, ?, ?)",
                (rid, device, boot, seq, bw, storage, failed(device), flags, body.decode(), sign(body), at),
            )
            n += 1
        con.commit()
    finally:
        con.close()
    return n


# -- a fleet through a real gateway, to confirmed reward epochs -----------------


def drive_to_confirmed_epochs(
    gw: Any,
    devices: list[Any],
    reports_each: int,
    publish: Callable[[str, bytes], None],
    figures: Callable[[str, int, int], tuple[int | None, int, str] | None],
    mine: Callable[[], None] | None = None,
    timeout: float = 120.0,
) -> None:
    """Publish the fleet's reports to the gateway ``gw`` (a gateway.service.Gateway, started), wait until
    they are stored, attest them (the stand-in above: these reports carry no probe run and no plot, so the
    gateway's own stage would attest nothing measured), then run the gateway's pipeline passes until every
    batch is covered by a reward epoch confirmed on chain.

    The test runs the pipeline loop itself (Gateway.step, what Gateway.run calls) so that the attestations
    are in the store before the closer's first look: with issue 12's stage that ordering is the gateway's.
    """
    from gateway.rewards.closer import epochs
    from gateway.store import Store

    store = Store(gw.cfg.db)
    for _ in range(reports_each):
        for d in devices:
            publish(d.topic, d.report())
    total = reports_each * len(devices)
    deadline = time.monotonic() + timeout
    while store.report_count() < total:
        assert time.monotonic() < deadline, "reports were not stored in time"
        time.sleep(0.05)
    attest_reports(gw.cfg.db, gw.gateway_id, gw.chain.gateway_address, gw.chain.attest, figures)

    def settled() -> bool:
        eps = epochs(store)
        last = store.last_batch()
        return (
            store.unbatched_count() == 0
            and last is not None
            and bool(eps)
            and eps[-1].last_batch == last.seq
            and all(e.state == "confirmed" for e in eps)
        )

    while not settled():
        assert time.monotonic() < deadline, "reward epochs were not confirmed in time: %r" % (
            [(e.epoch, e.state, e.last_batch) for e in epochs(store)],
        )
        gw.step()
        if mine is not None:
            mine()
        time.sleep(0.1)
    store.close()
