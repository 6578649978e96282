"""Epoch closing from a real gateway store: which batches, which reports count and why not,
when an epoch may close, and the same bytes when it is closed again after a crash.

Attestation rows come from the stand-in in tests/rewards_helpers.py (exact figures per report); the
real attestation path is tests/test_rewards_attested_e2e.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from surge_protocol import claims as C
from gateway.batcher import Batcher
from gateway.chain import ChainKey
from gateway.rewards import closer as RC
from gateway.rewards import epoch as E
from gateway.rewards import formula as F
from gateway.store import AcceptedRow, Store
from gw_helpers import Device
from rewards_helpers import attest_reports

KEY = ChainKey.from_hex("59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")
ALICE = E.checksum_owner("0x" + "a1" * 20)
BOB = E.checksum_owner("0x" + "b0" * 20)
assert ALICE and BOB
T0 = 1_800_000_000.0  # a multiple of 60: epoch windows of 60 s start here
FORMULA = F.Formula(budget=10**21, caps={"esp32": F.BoardCap(storage_bytes=1 << 30)})


def store_with(tmp: Path) -> tuple[Store, dict[str, Device]]:
    st = Store(tmp / "gw.db")
    devs = {"alice": Device(board="rpi-4"), "bob": Device(board="esp32"), "label": Device(board="rpi-4")}
    for name, d in devs.items():
        owner = {"alice": ALICE.lower(), "bob": BOB, "label": "bob's shed"}[name]
        st.enroll(d.id, d.key.public, d.board, d.fleet, owner)
    return st, devs


def accept(st: Store, d: Device, at: float, interval: int = 10) -> None:
    data = d.report(interval=interval)
    st.commit_outcomes([AcceptedRow(d.id, d.boot, d.seq - 1, at, data, False, C.prev_hash(data))], [])


def confirm_all(st: Store) -> None:
    """Every batch anchored and confirmed, through the moves the anchorer makes (gateway/lifecycle.py)."""
    for b in st.batches():
        if b.state in ("confirmed", "receipted"):
            continue
        aid = st.begin_anchor(b.seq, 31337, "0x" + "ab" * 20, KEY.address)
        st.update_anchor(aid, "submitted", tx_hash=bytes([b.seq % 256]) * 32)
        st.update_anchor(aid, "confirmed", block_number=b.seq, block_hash=bytes([b.seq % 256]) * 32)


def close_batches(batcher: Batcher, st: Store, now: float) -> None:
    """Close every batch due at ``now``, confirming each but the last: a batch closes
    only while none waits for the chain (gateway/batcher.py)."""
    while batcher.step(now):
        if st.unbatched_count():
            confirm_all(st)


def figures(devs: dict[str, Device]):  # type: ignore[no-untyped-def]
    ids = {d.id: n for n, d in devs.items()}

    def fig(device: str, boot: int, seq: int) -> tuple[int | None, int, str] | None:
        name = ids[device]
        if name == "alice":
            return (2 << 20, 4 << 30, "") if seq != 2 else None  # one report left unattested
        return (None, 8 << 30, "storage_overclaim") if name == "bob" else (1 << 20, 1 << 30, "")

    return fig


def test_epoch_closes_over_confirmed_batches_with_reasons(tmp_path: Path) -> None:
    st, devs = store_with(tmp_path)
    batcher = Batcher(st, "gw-test", batch_size=3, batch_seconds=1)
    for i in range(6):  # 6 reports each in the first 60-s window
        for d in devs.values():
            accept(st, d, T0 + 5 + i * 10)
    close_batches(batcher, st, T0 + 70)
    accept(st, devs["alice"], T0 + 65)  # next window
    closer = RC.EpochCloser(st, "gw-test", KEY.address, FORMULA, 60, KEY.sign_message)
    window = closer.next_window()
    assert window is not None and window[:2] == (round(T0 * 1000), round((T0 + 60) * 1000))
    assert not closer.ready(window, T0 + 100)  # batches not confirmed yet
    confirm_all(st)
    assert not closer.ready(window, T0 + 60.5)  # within the grace after the window's end
    assert attest_reports(st.path, "gw-test", KEY.address, KEY.sign_message, figures(devs)) == 18
    before = tmp_path / "before.db"
    with sqlite3.connect(before) as dst:  # the state a crash right before the commit would leave
        st.db.backup(dst)

    closed = closer.step(T0 + 100)
    assert [c.epoch for c in closed] == [1]
    ef = E.parse(closed[0].file)
    assert E.recompute(closed[0].file) == []
    body = ef.record.body
    assert [b["batch_seq"] for b in body["batches"]] == [b.seq for b in st.batches() if b.last_at < T0 + 60]
    by = {d["device"]: d for d in body["devices"]}
    a, b, lab = by[devs["alice"].id], by[devs["bob"].id], by[devs["label"].id]
    assert a["owner"] == ALICE and a["reports"] == 6 and a["attested"] == 5
    assert a["excluded"] == [[1, 2, E.NOT_ATTESTED]] and a["interval_s"] == 10
    assert a["storage_bytes"] == 4 << 30 and a["bw_up"] == 2 << 20
    assert b["flags"] == ["storage_overclaim"] and b["bw_up"] is None
    assert lab["owner"] == "bob's shed" and len(lab["excluded"]) == 6
    assert {r for _, _, r in lab["excluded"]} == {E.OWNER_NOT_ADDRESS}
    pts = dict(body["outputs"]["points"])
    # alice: (4096 MiB + 2048 KiB/s) x 5/6; bob: 1 GiB cap, flagged: half kept; the label earns nothing.
    assert pts[a["device"]] == (4096 + 2048) * 833333 // 1_000_000
    assert pts[b["device"]] == 1024 // 2 and pts[lab["device"]] == 0
    amounts = dict(body["outputs"]["amounts"])
    assert set(amounts) == {ALICE, BOB} and sum(map(int, amounts.values())) == 10**21
    assert RC.cumulative(st) == {o: int(v) for o, v in amounts.items()}

    # Closing again from the state before the commit gives the same bytes.
    st2 = Store(before)
    again = RC.EpochCloser(st2, "gw-test", KEY.address, FORMULA, 60, KEY.sign_message).step(T0 + 100)
    assert again[0].file == closed[0].file

    # Epoch 2: one more report of alice's, cumulative carries bob's amount.
    assert closer.step(T0 + 100) == []  # window 2 has not ended
    close_batches(batcher, st, T0 + 100)
    confirm_all(st)
    attest_reports(st.path, "gw-test", KEY.address, KEY.sign_message, figures(devs))
    second = closer.step(T0 + 130)
    assert [c.epoch for c in second] == [2]
    h2 = E.parse(second[0].file).record.header
    assert h2["prev_root"] == ef.record.header["root"] and h2["start"] == round((T0 + 60) * 1000)
    cum2 = dict(E.parse(second[0].file).record.body["outputs"]["cumulative"])
    assert int(cum2[ALICE]) == int(amounts[ALICE]) + 10**21 and cum2[BOB] == amounts[BOB]
    assert E.recompute(second[0].file, previous=closed[0].file) == []
    assert any("prev_root" in d for d in E.recompute(second[0].file, previous=second[0].file))


def test_unbatched_report_holds_the_epoch_and_empty_windows_are_skipped(tmp_path: Path) -> None:
    st, devs = store_with(tmp_path)
    batcher = Batcher(st, "gw-test", batch_size=100, batch_seconds=1)
    closer = RC.EpochCloser(st, "gw-test", KEY.address, FORMULA, 60, KEY.sign_message)
    assert closer.step(T0 + 1000) == []  # no batch at all
    # Window 1: reports of the label owner only (nobody can earn): no epoch, the window is skipped.
    accept(st, devs["label"], T0 + 5)
    batcher.step(T0 + 10)
    confirm_all(st)
    attest_reports(st.path, "gw-test", KEY.address, KEY.sign_message, figures(devs))
    assert closer.step(T0 + 100) == [] and RC.last_epoch(st) is None
    # Window 3 (the second is empty): alice reports; one more report before the end is unbatched.
    accept(st, devs["alice"], T0 + 125)
    batcher.step(T0 + 130)
    accept(st, devs["alice"], T0 + 170)
    confirm_all(st)
    attest_reports(st.path, "gw-test", KEY.address, KEY.sign_message, figures(devs))
    window = closer.next_window()
    assert window is not None and window[0] == round((T0 + 120) * 1000)
    assert closer.step(T0 + 200) == []  # the report at +170 is not in a batch yet
    batcher.step(T0 + 200)
    confirm_all(st)
    attest_reports(st.path, "gw-test", KEY.address, KEY.sign_message, figures(devs))
    (ep,) = closer.step(T0 + 200)
    assert ep.epoch == 1 and ep.start_ms == round((T0 + 120) * 1000)
    body = E.parse(ep.file).record.body
    assert [d["device"] for d in body["devices"]] == [devs["alice"].id]
    assert sum(d["reports"] for d in body["devices"]) == 2
