"""Settlement on the in-process EVM, the crash and drop cases: an epoch sent just before a crash
(pending record written, transaction hash not) is found on chain and not sent twice; a transaction
that never gets a receipt is dropped and the same epoch is sent again; epochs go out in order.

Attestations are the stand-in rows of tests/rewards_helpers.py; the real attestation path is
tests/test_rewards_attested_e2e.py."""

from __future__ import annotations

from pathlib import Path

from gateway.chain import open_chain
from gateway.rewards.open import open_rewards_chain
from gateway.rewards.closer import EpochCloser, epochs
from gateway.rewards.settler import Settler, _live, anchors
from gateway.store import Store
from rewards_helpers import attest_reports
from test_rewards_closer import FORMULA, T0, accept, confirm_all, store_with


def two_epochs(tmp: Path, sign, address: str) -> Store:  # type: ignore[no-untyped-def]
    from gateway.batcher import Batcher

    st, devs = store_with(tmp)
    batcher = Batcher(st, "gw-test", batch_size=100, batch_seconds=1)
    for w in range(2):
        for d in devs.values():
            accept(st, d, T0 + 60 * w + 5)
        batcher.step(T0 + 60 * w + 10)
        # A batch closes while none waits for the chain (gateway/batcher.py), so each window's is confirmed first.
        confirm_all(st)
    attest_reports(st.path, "gw-test", address, sign, lambda dev, b, s: (1 << 20, 1 << 30, ""))
    closed = EpochCloser(st, "gw-test", address, FORMULA, 60, sign).step(T0 + 200)
    assert [e.epoch for e in closed] == [1, 2]
    return st


def test_crash_after_send_and_drop_are_settled_once_in_order(tmp_path: Path) -> None:
    anchor = open_chain("memory")
    rewards = open_rewards_chain("memory", key=anchor.tx_signer, anchor_chain=anchor)
    st = two_epochs(tmp_path, anchor.attest, anchor.gateway_address)
    events: list[tuple[str, int]] = []
    settler = Settler(st, rewards, 2, anchor.attest, lambda ev, e, a: events.append((ev, e.epoch)), drop_after_s=5)

    # A crash right after the transaction went out: the pending record exists, its hash does not.
    e1 = epochs(st)[0]
    settler._begin(e1)
    rewards.publish(e1.epoch, e1.root, e1.leaves, e1.total)
    restarted = Settler(st, rewards, 2, anchor.attest, lambda ev, e, a: events.append((ev, e.epoch)), drop_after_s=5)
    restarted.step(1e12)
    a = _live(st, 1)
    assert a is not None and a.state == "submitted" and a.tx_hash == rewards.epoch_tx(1)
    assert rewards.last_epoch() == 1  # not sent a second time

    # Epoch 2's transaction "vanishes": a hash no node knows, older than drop_after_s.
    for _ in range(20):
        rewards.mine(1)
        restarted.step()
        if _live(st, 2) is not None:
            break
    live2 = _live(st, 2)
    assert live2 is not None and live2.state == "submitted"
    assert [e for e in events if e[0] == "confirmed"] == [("confirmed", 1)]
    st.db.execute("UPDATE reward_anchors SET tx_hash=?, updated_at=0 WHERE id=?", (b"\x11" * 32, live2.id))
    # The real epoch-2 transaction is already mined; the settler must drop the unknown hash, then
    # find epoch 2 on chain (same root) rather than send it again.
    for _ in range(20):
        rewards.mine(1)
        restarted.step()
        if all(e.state == "confirmed" for e in epochs(st)):
            break
    assert all(e.state == "confirmed" for e in epochs(st))
    states = [x.state for x in anchors(st, 2)]
    assert states[0] == "dropped" and states[-1] == "confirmed", states
    assert rewards.last_epoch() == 2 and [e for e in events if e[0] == "confirmed"] == [
        ("confirmed", 1),
        ("confirmed", 2),
    ]
    for e in epochs(st):
        assert rewards.root_of(e.epoch) == e.root


def test_epoch_the_balance_does_not_cover_waits_for_a_top_up(tmp_path: Path) -> None:
    # SurgeRewards refuses an epoch whose cumulative total its token balance does not cover
    # (Underfunded): the settler keeps it, in order, and publishes it once the contract is funded.
    anchor = open_chain("memory")
    rewards = open_rewards_chain("memory", key=anchor.tx_signer, anchor_chain=anchor, fund=1)
    st = two_epochs(tmp_path, anchor.attest, anchor.gateway_address)
    settler = Settler(st, rewards, 2, anchor.attest, lambda ev, e, a: None, drop_after_s=5)
    for _ in range(3):
        settler.step()
        rewards.mine(1)
    assert rewards.last_epoch() == 0 and settler.underfunded == 1 and settler.underfunded_count >= 3
    assert all(e.state == "closed" for e in epochs(st))
    rewards.fund(sum(e.total for e in epochs(st)))
    for _ in range(20):
        settler.step()
        rewards.mine(1)
        if all(e.state == "confirmed" for e in epochs(st)):
            break
    assert all(e.state == "confirmed" for e in epochs(st)) and settler.underfunded is None
    assert rewards.last_epoch() == 2 and rewards.outstanding_of() == epochs(st)[-1].total
