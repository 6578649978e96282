"""Device key rotation (docs/protocol.md §3.1).

A report signed by the device's current key announces the next key in surge
claim 15 (``next_pubkey``).  The gateway records the announcement when it
accepts the report (``devices.next_pubkey``) and switches to the new key only
once the announcing report's batch is confirmed on chain: from then on the
device id stays the same (topics, broker user, ACL), the new key signs, and a
report under the old key is refused (``kid_mismatch``).  Retired keys are kept
in ``device_keys`` so proof bundles of older reports still name the key that
signed them.

Stage hand-offs are durable: the switch and the key history are one
transaction, and applying the same confirmed batch twice (a crash between the
switch and the receipts, or a re-anchoring after a reorg) changes nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable

import cbor2

from surge_protocol import claims as C
from gateway.db import DB_ERRORS, INTEGRITY_ERRORS
from gateway.store import Batch, Store

log = logging.getLogger("surge.gateway.rotation")


def announced_key(claims: Any) -> bytes | None:
    s = claims.get(C.SURGE) if isinstance(claims, dict) else None
    key = s.get(C.NEXT_PUBKEY) if isinstance(s, dict) else None
    return key if isinstance(key, bytes) and len(key) == 32 else None


def note_announcements(store: Store, accepted: Iterable[Any]) -> None:
    """Record ``next_pubkey`` of accepted reports (``Accepted`` outcomes) that announce one."""
    for acc in accepted:
        acc = acc[0] if isinstance(acc, tuple) else acc
        key = announced_key(acc.claims)
        if key is None:
            continue
        try:
            with store._tx():
                store.db.execute(
                    "UPDATE devices SET next_pubkey=? WHERE device_id=? AND revoked_at IS NULL",
                    (key, acc.device.device_id),
                )
        except DB_ERRORS as exc:  # recorded again from the batch at confirmation
            log.warning("could not record the next key of %s now: %s", acc.device.device_id, exc)
        log.info(
            "device %s announced its next key %s (switch once this report is anchored)",
            acc.device.device_id,
            C.device_id(key),
        )


def apply_confirmed(store: Store, batch: Batch) -> list[str]:
    """Switch every device whose key announcement is in ``batch``; returns their ids."""
    switched: list[str] = []
    # Only devices with an announcement on record can switch; most batches have
    # none, and then no leaf needs decoding (this runs at every confirmation).
    pending = {
        r[0]
        for r in store.db.execute(
            "SELECT DISTINCT r.device_id FROM reports r JOIN devices d ON d.device_id = r.device_id "
            "WHERE r.batch_seq = ? AND d.next_pubkey IS NOT NULL",
            (batch.seq,),
        )
    }
    if not pending:
        return switched
    for rep in store.batch_leaves(batch.seq):
        if rep.device_id not in pending:
            continue
        try:
            tagged = cbor2.loads(rep.cose)
            claims = cbor2.loads(tagged.value[2])
            kid = cbor2.loads(tagged.value[0]).get(4)
        except Exception:  # stored reports were verified; this is belt and braces
            continue
        key = announced_key(claims)
        if key is None:
            continue
        dev = store.device(rep.device_id)
        if dev is None or not dev.active or kid != C.kid(dev.pubkey) or dev.pubkey == key:
            continue  # already switched (applied before), or announced under a key since retired
        try:
            with store._tx():
                store.db.execute(
                    "INSERT INTO device_keys(device_id, pubkey, retired_at, batch_seq) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (dev.device_id, dev.pubkey, time.time(), batch.seq),
                )
                store.db.execute(
                    "UPDATE devices SET pubkey=?, next_pubkey=NULL WHERE device_id=?", (key, dev.device_id)
                )
                store.bump_registry()
        except INTEGRITY_ERRORS:
            log.error(
                "device %s announced key %s, which another device uses; keeping its current key",
                dev.device_id,
                C.device_id(key),
            )
            continue
        log.info(
            "device %s switched to its next key %s (announcement anchored in batch %d)",
            dev.device_id,
            C.device_id(key),
            batch.seq,
        )
        switched.append(dev.device_id)
    return switched


def key_for_kid(store: Store, device_id: str, kid: bytes) -> bytes | None:
    """The device's current or retired public key whose kid is ``kid``."""
    dev = store.device(device_id)
    if dev is not None and C.kid(dev.pubkey) == kid:
        return dev.pubkey
    for (pub,) in store.db.execute("SELECT pubkey FROM device_keys WHERE device_id=?", (device_id,)):
        if C.kid(bytes(pub)) == kid:
            return bytes(pub)
    return None


def is_retired(store: Store, pubkey: bytes) -> bool:
    """A retired device key must never be enrolled (or announced) again."""
    return store.db.execute("SELECT 1 FROM device_keys WHERE pubkey=?", (pubkey,)).fetchone() is not None
