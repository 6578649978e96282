"""The batch and anchor lifecycles (gateway/lifecycle.py): the table, and the store refusing a move it lacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from surge_protocol import claims as C
from gateway import lifecycle as L
from gateway.batcher import Batcher
from gateway.store import AcceptedRow, Store
from gw_helpers import Device


def test_every_state_has_its_moves_and_dropped_is_final() -> None:
    assert set(L.ANCHOR_MOVES) == {L.SUBMITTING, L.SUBMITTED, L.MINED, L.CONFIRMED, L.DROPPED}
    assert set(L.BATCH_MOVES) == {L.CLOSED, L.ANCHORING, L.CONFIRMED, L.RECEIPTED}
    assert all(L.DROPPED in moves for s, moves in L.ANCHOR_MOVES.items() if s != L.DROPPED)
    assert L.ANCHOR_MOVES[L.DROPPED] == frozenset()
    for anchor, batch in (
        (L.SUBMITTING, L.ANCHORING),
        (L.MINED, L.ANCHORING),
        (L.CONFIRMED, L.CONFIRMED),
        (L.DROPPED, L.CLOSED),
    ):
        assert L.anchored_state(anchor) == batch
    with pytest.raises(L.LifecycleError, match="from 'dropped' to 'confirmed'"):
        L.check_anchor_move(L.DROPPED, L.CONFIRMED)
    with pytest.raises(L.LifecycleError, match="from 'closed' to 'receipted'"):
        L.check_batch_move(L.CLOSED, L.RECEIPTED)


def test_store_refuses_a_move_the_lifecycle_lacks_and_changes_nothing(tmp_path: Path) -> None:
    st = Store(tmp_path / "gw.db")
    d = Device(board="rpi-4")
    st.enroll(d.id, d.key.public, d.board, d.fleet, "")
    data = d.report()
    st.commit_outcomes([AcceptedRow(d.id, d.boot, d.seq - 1, 1.0, data, False, C.prev_hash(data))], [])
    batch = Batcher(st, "gw", 1, 1).close(2.0)
    assert batch is not None
    with pytest.raises(L.LifecycleError):
        st.set_batch_state(batch.seq, L.CONFIRMED)  # a batch is confirmed only by its anchor
    aid = st.begin_anchor(batch.seq, 1, "0x" + "00" * 20, "0x" + "11" * 20)
    with pytest.raises(L.LifecycleError, match="from 'submitting' to 'mined'"):
        st.update_anchor(aid, L.MINED, block_number=1, block_hash=b"\x01" * 32)
    assert st.anchor(aid).state == L.SUBMITTING and st.batch(batch.seq).state == L.ANCHORING  # type: ignore[union-attr]
    st.update_anchor(aid, L.SUBMITTED, tx_hash=b"\x02" * 32)
    st.update_anchor(aid, L.CONFIRMED, block_number=1, block_hash=b"\x01" * 32)
    st.mark_receipted(batch.seq)
    st.update_anchor(aid, L.DROPPED, block_number=1, block_hash=b"\x01" * 32)  # a reorg took it away
    assert st.batch(batch.seq).state == L.CLOSED  # type: ignore[union-attr]
    with pytest.raises(L.LifecycleError):
        st.update_anchor(aid, L.CONFIRMED, block_number=2, block_hash=b"\x03" * 32)
    st.close()
