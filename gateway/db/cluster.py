"""One logical gateway, several processes: what every gateway of a cluster must share.

A cluster (several gateways on one PostgreSQL database) is one gateway to the
outside: one gateway id in every receipt and batch record, one chain key that
signs attestations and anchors, one anchor contract.  The first gateway to
start records its id and chain address in the database; a gateway configured
with another is refused before it ingests anything, with what to change.
Setup that must happen once (generating the id, deploying contracts) runs
under a session advisory lock, so gateways started together do it once.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from gateway.store import Store, StoreError

# pg_advisory_lock key held while a gateway sets itself up ("surge-set" in ASCII).
SETUP_LOCK = 0x7375726765_736574


@contextlib.contextmanager
def setup_lock(store: Store) -> Iterator[None]:
    """Cluster: one gateway at a time through the block; SQLite: no-op."""
    if not store.shared:
        yield
        return
    store.db.execute("SELECT pg_advisory_lock(?)", (SETUP_LOCK,))
    try:
        yield
    finally:
        store.db.execute("SELECT pg_advisory_unlock(?)", (SETUP_LOCK,))


def check_identity(store: Store, gateway_id: str, gateway_address: str | None) -> None:
    """Record (first gateway) or compare (every later one) the cluster's gateway id and chain address
    (``None``: the in-process chain, whose key is each process's own)."""
    recorded_id = store.meta_setdefault("gateway_id", gateway_id)
    if recorded_id != gateway_id:
        raise StoreError(
            "database %s belongs to gateway id %s, but this gateway is configured as %s: every "
            "gateway of a cluster is the same logical gateway; set gateway_id = %r (or leave it out) "
            "in this gateway's config" % (store.path_for_humans(), recorded_id, gateway_id, recorded_id)
        )
    if gateway_address is None:
        return
    recorded = store.meta_setdefault("gateway_address", gateway_address)
    if recorded.lower() != gateway_address.lower():
        raise StoreError(
            "database %s records chain address %s, but this gateway's chain key is %s: every gateway "
            "of a cluster signs with the same chain key; give this gateway the cluster's keystore"
            % (store.path_for_humans(), recorded, gateway_address)
        )
