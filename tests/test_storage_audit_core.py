"""Storage audit, gateway side without the network: the core (vectors, parsing,
probabilities, hypothesis), and the Auditor on a real database with a clock of
the test's own, against the real device code (agent.storage_proof) in process."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import session
from conftest import VECTORS
from gateway.storage_audit import core
from gateway.storage_audit.auditor import AuditSettings, Auditor
from gateway.storage_audit.standing import WINDOW_META, storage_standing
from gateway.store import Store
from gw_helpers import Device

# -- core -------------------------------------------------------------------------


def test_vectors_reproduce() -> None:
    doc = json.loads((VECTORS / "storage_audit.json").read_text())
    seed = bytes.fromhex(doc["seed"])
    for c in doc["cases"]:
        b0 = core.block(seed, c["plot"], 0, c["block_size"])
        assert b0[:64].hex() == c["block0_head"] and len(b0) == c["block_size"]
        got = core.expected_proof(seed, c["plot"], c["block_size"], bytes.fromhex(c["nonce"]), c["idx"])
        assert got.hex() == c["proof"]
    assert core.store_command(7, 0, core.block(seed, 7, 0, 64)).hex() == doc["store_command"]
    assert core.challenge_command(7, bytes(range(16)), [3, 0, 3, 1], 10000).hex() == doc["challenge_command"]


def test_probabilities() -> None:
    # k = 16 catches a device missing 10% of its plot 81% of the time per challenge.
    assert 1 - core.survival(0.10, 16) == pytest.approx(0.8147, abs=1e-4)
    # Six challenges an hour (the defaults): 1 - 0.9^96.
    assert 1 - core.survival(0.10, 16, 6) > 0.9999
    assert core.challenges_to_catch(0.10, 16, 0.99) == 3
    assert core.challenges_to_catch(0.01, 16, 0.99) == 29


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b"x" * 600, "oversized"),
        (b"\xff\xfe", "malformed"),
        (b"[1,2]", "malformed"),
        (b'{"t":"nope"}', "malformed"),
        (b'{"t":"stored","plot":-1,"index":0}', "malformed"),
        (b'{"t":"stored","plot":1,"index":true}', "malformed"),
        (b'{"t":"stored","plot":1,"index":4294967296}', "malformed"),
        (b'{"t":"answer","plot":1,"nonce":"00","proof":"00"}', "malformed"),
        (b'{"t":"answer","plot":1,"nonce":"' + b"zz" * 16 + b'","proof":"' + b"00" * 32 + b'"}', "malformed"),
        (b'{"t":"answer","plot":1,"nonce":"' + b"00" * 16 + b'","proof":"' + b"00" * 31 + b'"}', "malformed"),
        (b'{"t":"answer","plot":1,"nonce":"' + b"00" * 16 + b'","error":7}', "malformed"),
    ],
)
def test_parse_audit_rejects(payload: bytes, reason: str) -> None:
    with pytest.raises(core.AuditError) as e:
        core.parse_audit(payload)
    assert e.value.reason == reason


def test_parse_audit_accepts() -> None:
    assert core.parse_audit(b'{"t":"stored","plot":3,"index":9}') == core.Stored(3, 9)
    a = core.parse_audit(('{"t":"answer","plot":3,"nonce":"%s","proof":"%s"}' % ("ab" * 16, "cd" * 32)).encode())
    assert a == core.Answer(3, b"\xab" * 16, b"\xcd" * 32, None)
    e = core.parse_audit(('{"t":"answer","plot":3,"nonce":"%s","error":"missing"}' % ("ab" * 16)).encode())
    assert isinstance(e, core.Answer) and e.proof is None and e.error == "missing"


def test_plot_sizes() -> None:
    assert core.block_size_for("micropython") == 256 and core.block_size_for("cpython") == 4096
    assert core.plot_blocks(64 << 10, 256, None) == 256
    assert core.plot_blocks(64 << 10, 256, 10_000) == 39  # capped by the free storage reported
    assert core.plot_blocks(64 << 10, 4096, 100) == 0


@settings(max_examples=60, deadline=None)
@given(
    seed=st.binary(min_size=32, max_size=32),
    plot=st.integers(0, 2**32 - 1),
    size=st.sampled_from([64, 256, 4096]),
    stored=st.integers(1, 500),
    k=st.integers(1, 64),
    entropy=st.binary(min_size=8, max_size=32),
    flip=st.integers(0, 10**6),
)
def test_honest_passes_any_changed_byte_fails(
    seed: bytes, plot: int, size: int, stored: int, k: int, entropy: bytes, flip: int
) -> None:
    idx = core.choose_indices(entropy, stored, k)
    assert len(idx) == k and all(0 <= i < stored for i in idx)
    nonce = entropy[:16].ljust(16, b"\0")
    blocks = [core.block(seed, plot, i, size) for i in idx]
    honest = core.Answer(plot, nonce, core.proof(nonce, blocks), None)
    assert core.judge(honest, seed, plot, size, nonce, idx) == core.PASSED
    # One byte of one challenged block wrong: the answer fails.
    j = flip % k
    bad = bytearray(blocks[j])
    bad[flip % size] ^= 1 + flip % 255
    cheat = core.Answer(plot, nonce, core.proof(nonce, blocks[:j] + [bytes(bad)] + blocks[j + 1 :]), None)
    assert core.judge(cheat, seed, plot, size, nonce, idx) == core.FAILED
    # Bound to the nonce: the same blocks under another nonce fail.
    other = core.Answer(plot, nonce, core.proof(b"\x01" * 16, blocks), None)
    assert nonce == b"\x01" * 16 or core.judge(other, seed, plot, size, nonce, idx) == core.FAILED


# -- the Auditor against the real device module -----------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0


class _Link:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, topic: str, data: bytes, qos: int = 1, retain: bool = False) -> None:
        self.sent.append((topic, bytes(data)))


class _Cfg:
    def __init__(self, d: str) -> None:
        self.d = d

    def path(self, key: str) -> str:
        return self.d


class DeviceSim:
    """agent.storage_proof in process: the device code, its flash a directory."""

    def __init__(self, device_id: str, fleet: str, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        self.id, self.fleet = device_id, fleet
        self.cfg = _Cfg(str(d))
        self.link = _Link()
        self.lines: list[str] = []
        self.answering = True
        self.key: Any = None
        self.audit_out: list[bytes] = []

    def topic(self, kind: str) -> str:
        return "surge/v1/%s/%s/%s" % (self.fleet, self.id, kind)

    def log(self, msg: str) -> None:
        self.lines.append(msg)

    def receive(self, payload: bytes) -> list[tuple[str, bytes]]:
        if payload[0] == core.CHALLENGE and not self.answering:
            return []
        session.storage_command(self, payload)  # what agent.runner does with a binary cmd
        session.send_audit(self)
        out, self.link.sent = self.link.sent, []
        return out


def _setup(tmp_path: Path, board: str = "esp32", **over: Any) -> tuple[Store, Auditor, DeviceSim, Clock]:
    store = Store(tmp_path / "gw.db")
    key = Device("lab", board)
    dev_id = key.id
    store.enroll(dev_id, key.key.public, board, "lab", "")
    clock = Clock()
    store.db.execute(
        "INSERT INTO device_state(device_id, boot, seq, last_hash, last_seen) VALUES (?, 1, 1, ?, ?)",
        (dev_id, b"\0" * 16, clock.t),
    )
    s = dict(
        plot_bytes_small=16 * 256,
        k=16,
        interval_s=60.0,
        deadline_s=5.0,
        retries=2,
        window_s=3600.0,
        blocks_per_s=1000.0,
    )
    s.update(over)
    aud = Auditor(store, AuditSettings(**s))
    sim = DeviceSim(dev_id, "lab", tmp_path / "flash")
    sim.key = key
    return store, aud, sim, clock


def _exchange(aud: Auditor, dev: DeviceSim, clock: Clock, seconds: float, step: float = 0.5) -> list[str]:
    """Run gateway ticks and the device for ``seconds`` of test time; outcomes of device messages."""
    outcomes = []
    end = clock.t + seconds
    while clock.t < end:
        # The device keeps reporting (only devices seen in the window are audited).
        aud.store.db.execute("UPDATE device_state SET last_seen=? WHERE device_id=?", (clock.t, dev.id))
        for topic, payload in aud.tick(clock.t):
            assert topic == dev.topic("cmd")
            for t, p in dev.receive(payload):
                outcomes.append(aud.on_message(t, p, clock.t))
        clock.t += step
    return outcomes


def test_honest_device_stores_plot_and_passes(tmp_path: Path) -> None:
    store, aud, dev, clock = _setup(tmp_path)
    outcomes = _exchange(aud, dev, clock, 5)
    p = aud.ledger.plot(dev.id)
    assert p is not None and p.block_size == 256 and p.blocks == 16 and p.stored == 16
    assert (Path(dev.cfg.d) / "plot.bin").stat().st_size == 16 * 256
    assert (Path(dev.cfg.d) / "plot.id").read_text() == "1 256"
    assert outcomes.count("stored") == 16 and outcomes.count("passed") == 1  # challenged once complete
    outcomes = _exchange(aud, dev, clock, 200)
    assert outcomes.count("passed") == 3  # then every 60 s
    assert storage_standing(store, dev.id, clock.t) == (16 * 256, 4, 0, 0)
    aud.flush_counts()
    counts = aud.ledger.counts()["lab"]
    assert counts["sent"] == 4 and counts["passed"] == 4 and counts["blocks_stored"] == 16


def test_device_that_lost_part_of_its_plot_is_caught(tmp_path: Path) -> None:
    store, aud, dev, clock = _setup(tmp_path, plot_bytes_small=64 * 256)
    _exchange(aud, dev, clock, 5)
    assert aud.ledger.plot(dev.id).stored == 64  # type: ignore[union-attr]
    # The cheat: keep the first half of the plot, refill the rest with other bytes
    # (same file size, so the device still claims every block).
    path = Path(dev.cfg.d) / "plot.bin"
    data = path.read_bytes()
    path.write_bytes(data[: 32 * 256] + os.urandom(32 * 256))
    outcomes = _exchange(aud, dev, clock, 400)
    # Each challenge misses with 1 - 0.5^16; the first failure voids the window.
    assert "failed" in outcomes
    proven, passed, failed, timed_out = storage_standing(store, dev.id, clock.t)
    assert proven == 0 and failed >= 1
    # After the failure the device got a new plot (id 2), stores it and passes again,
    # but the window still holds the failure: nothing proven until it ages out.
    p = aud.ledger.plot(dev.id)
    assert p is not None and p.plot >= 2
    outcomes = _exchange(aud, dev, clock, 3700, step=2.0)
    assert "failed" not in outcomes
    proven, passed, failed, _ = storage_standing(store, dev.id, clock.t)
    assert proven == 64 * 256 and passed >= 59 and failed == 0  # one every 60 s in the hour
    # Challenges older than two windows are forgotten; the counts per fleet stay.
    _exchange(aud, dev, clock, 3700, step=5.0)
    oldest = store.db.execute("SELECT MIN(resolved_at) FROM audit_challenges").fetchone()[0]
    assert oldest >= clock.t - 2 * 3600 - 61
    aud.flush_counts()
    assert aud.ledger.counts()["lab"]["failed"] >= 1


def test_silent_device_times_out_after_retries(tmp_path: Path) -> None:
    store, aud, dev, clock = _setup(tmp_path)
    _exchange(aud, dev, clock, 3)
    dev.answering = False
    # The next challenge at 60 s goes unanswered: deadline 5 s, first try and two retries.
    _exchange(aud, dev, clock, 60 + 16)
    aud.flush_counts()
    counts = aud.ledger.counts()["lab"]
    assert counts["sent"] == 2 and counts["retried"] == 2 and counts["timed_out"] == 1
    # The pass before it does not outweigh the timeout: nothing proven in the window.
    assert storage_standing(store, dev.id, clock.t) == (0, 1, 0, 1)


def test_retry_answered_in_time_passes(tmp_path: Path) -> None:
    store, aud, dev, clock = _setup(tmp_path)
    _exchange(aud, dev, clock, 3)
    msgs = aud.tick(clock.t + 61)  # a new challenge is due; the device misses it
    clock.t += 61
    ((topic, first),) = msgs
    clock.t += 6
    ((_, again),) = aud.tick(clock.t)  # the same challenge, resent
    assert again[9:25] == first[9:25]  # same nonce
    ((t, p),) = dev.receive(again)
    assert aud.on_message(t, p, clock.t) == "passed"


def test_bad_answers_are_counted_and_change_nothing(tmp_path: Path) -> None:
    store, aud, dev, clock = _setup(tmp_path, interval_s=60.0)
    _exchange(aud, dev, clock, 3)
    topic = dev.topic("audit")
    assert storage_standing(store, dev.id, clock.t)[1] == 1
    # A challenge is open; answers to it and around it:
    ((_, cmd),) = aud.tick(clock.t + 61)
    clock.t += 61
    nonce = cmd[9:25].hex()

    def answer(n: str, proof: str = "00" * 32) -> bytes:
        return ('{"t":"answer","plot":1,"nonce":"%s","proof":"%s"}' % (n, proof)).encode()

    assert aud.on_message(topic, answer("ee" * 16), clock.t) == "unknown_nonce"
    assert aud.on_message(topic.replace("/lab/", "/other/"), answer(nonce), clock.t) == "unknown_device"
    assert aud.on_message("surge/v1/lab/%s/audit" % ("ff" * 8), answer(nonce), clock.t) == "unknown_device"
    assert aud.on_message("surge/v1/lab/x/audit", answer(nonce), clock.t) == "bad_topic"
    assert aud.on_message(topic, b"{", clock.t) == "malformed"
    assert aud.on_message(topic, b" " * 4096, clock.t) == "oversized"
    assert aud.on_message(topic, b'{"t":"stored","plot":1,"index":3}', clock.t) == "ack_ignored"
    # An answer after the deadline: late, the challenge stays open for its retry.
    assert aud.on_message(topic, answer(nonce), clock.t + 5.5) == "late"
    assert aud.ledger.challenge(bytes.fromhex(nonce)).outcome is None  # type: ignore[union-attr]
    # The retry at the deadline; the honest answer to it in time passes; a repeat is already resolved.
    ((_, again),) = aud.tick(clock.t + 6)
    good = dev.receive(again)[0][1]
    assert aud.on_message(topic, good, clock.t + 6.5) == "passed"
    assert aud.on_message(topic, good, clock.t + 6.5) == "already_resolved"
    assert storage_standing(store, dev.id, clock.t + 7) == (16 * 256, 2, 0, 0)


def test_answer_for_another_devices_challenge(tmp_path: Path) -> None:
    store, aud, dev, clock = _setup(tmp_path)
    other = "aabbccddeeff0011"
    store.enroll(other, os.urandom(32), "esp32", "lab", "")
    _exchange(aud, dev, clock, 1)
    ch = aud.ledger.open_challenges()[0] if aud.ledger.open_challenges() else None
    if ch is None:
        aud.tick(clock.t + 61)
        ch = aud.ledger.open_challenges()[0]
    msg = ('{"t":"answer","plot":1,"nonce":"%s","proof":"%s"}' % (ch.nonce.hex(), "00" * 32)).encode()
    assert aud.on_message("surge/v1/lab/%s/audit" % other, msg, clock.t) == "other_device"
    assert aud.ledger.challenge(ch.nonce).outcome is None  # type: ignore[union-attr]


def test_answer_flood_is_rate_limited(tmp_path: Path) -> None:
    store, aud, dev, clock = _setup(tmp_path, blocks_per_s=5.0)
    topic = dev.topic("audit")
    outcomes = [aud.on_message(topic, b'{"t":"stored","plot":9,"index":0}', clock.t) for _ in range(200)]
    assert outcomes.count("rate_limited") >= 150
    # Another device is not slowed: its own bucket.
    other = "aabbccddeeff0011"
    store.enroll(other, os.urandom(32), "esp32", "lab", "")
    assert (
        aud.on_message("surge/v1/lab/%s/audit" % other, b'{"t":"stored","plot":9,"index":0}', clock.t) == "ack_ignored"
    )


def test_plot_capped_by_reported_free_storage_and_window_meta(tmp_path: Path) -> None:
    store, aud, dev, clock = _setup(tmp_path, board="rpi-4", plot_bytes=1 << 20)
    # The device's latest report says it has 3 blocks' worth of free storage.
    cose = dev.key.report(storage=(10**9, 3 * 4096 + 100))
    store.db.execute(
        "INSERT INTO reports(device_id, boot, seq, received_at, cose) VALUES (?, 1, 0, ?, ?)", (dev.id, clock.t, cose)
    )
    aud.tick(clock.t)
    p = aud.ledger.plot(dev.id)
    assert p is not None and p.block_size == 4096 and p.blocks == 3
    store.set_meta(WINDOW_META, "60")
    _exchange(aud, dev, clock, 3)
    assert storage_standing(store, dev.id, clock.t)[1] == 1
    assert storage_standing(store, dev.id, clock.t + 61) == (0, 0, 0, 0)  # aged out of a 60 s window


def test_restart_resumes_plot_and_open_challenge(tmp_path: Path) -> None:
    # The audit's state is in the database: a gateway restarted in the middle of
    # plotting goes on from the acknowledged count, and one restarted with a
    # challenge open sends it again with a fresh deadline (its outage is not the device's).
    store, aud, dev, clock = _setup(tmp_path, plot_bytes_small=64 * 256, blocks_per_s=10.0)
    _exchange(aud, dev, clock, 1.5)
    stored = aud.ledger.plot(dev.id).stored  # type: ignore[union-attr]
    assert 0 < stored < 64
    aud2 = Auditor(Store(tmp_path / "gw.db"), aud.s)
    _exchange(aud2, dev, clock, 10)
    assert aud2.ledger.plot(dev.id).stored == 64  # type: ignore[union-attr]
    assert storage_standing(store, dev.id, clock.t)[1] == 1
    ((_, cmd),) = aud2.tick(clock.t + 61)  # the next challenge; the gateway "dies" before any answer
    clock.t += 61 + 100  # ... and is back long after its deadline
    aud3 = Auditor(Store(tmp_path / "gw.db"), aud.s)
    ((_, again),) = aud3.resume(clock.t)
    assert again == cmd
    ((t, p),) = dev.receive(again)
    assert aud3.on_message(t, p, clock.t + 1) == "passed"
    assert storage_standing(store, dev.id, clock.t + 1) == (64 * 256, 2, 0, 0)


def test_planning_pass_reads_the_same_rows_however_many_devices(tmp_path: Path) -> None:
    # Each device's last challenge comes from one query for all of them, not one per device:
    # a planning pass with nothing due runs as many statements for 6 devices as for 1.
    store, aud, dev, clock = _setup(tmp_path, interval_s=600.0)
    _exchange(aud, dev, clock, 5)  # plotted and challenged once

    def statements_in_a_pass() -> int:
        seen: list[str] = []
        store.db.set_trace_callback(seen.append)
        try:
            aud.last_plan = float("-inf")
            assert aud.tick(clock.t) == []  # nothing due: the last challenge is recent
        finally:
            store.db.set_trace_callback(None)
        return len(seen)

    one = statements_in_a_pass()
    for i in range(5):
        other = Device("lab", "esp32")
        store.enroll(other.id, other.key.public, "esp32", "lab", "")
        store.db.execute(
            "INSERT INTO device_state(device_id, boot, seq, last_hash, last_seen) VALUES (?, 1, 1, ?, ?)",
            (other.id, b"\0" * 16, clock.t),
        )
        p = aud.ledger.new_plot(other.id, bytes(32), 256, 1, clock.t)
        store.db.execute("UPDATE audit_plots SET stored=blocks WHERE device_id=?", (other.id,))
        plot = aud.ledger.plot(other.id)
        assert plot is not None and plot.plot == p.plot
        ch = aud.ledger.add_challenge(plot, bytes([i]) * 16, [0], clock.t, clock.t + 5)
        aud.ledger.resolve(ch.id, "passed", clock.t)
    assert statements_in_a_pass() == one
