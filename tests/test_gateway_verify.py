"""The verification chain, check by check: bytes in, typed outcome out (no I/O)."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

import boards
from surge_protocol import claims as C
from firmware_shim import cose
from gateway.store import Device as DeviceRow
from gateway.store import DeviceState
from gateway.verify import Accepted, Duplicate, Limits, Rejection, Verifier
from gw_helpers import Device

NOW = 1_800_000_000.0


class World:
    """Registry, state and history as plain dicts, the way the verifier sees them."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceRow] = {}
        self.states: dict[str, DeviceState] = {}
        self.history: dict[tuple[str, int, int], bytes] = {}
        self.verifier = Verifier(
            self.devices.get,
            self.states.get,
            lambda d, b, s: self.history.get((d, b, s)),
            self._board,
            Limits(max_bytes=1024),
        )

    @staticmethod
    def _board(name: str) -> boards.BoardProfile | None:
        return boards.load(name)

    def enroll(self, dev: Device, revoked: bool = False) -> None:
        self.devices[dev.id] = DeviceRow(
            dev.id, dev.key.public, dev.board, dev.fleet, "", 0.0, 1.0 if revoked else None, None
        )

    def submit(self, dev: Device, data: bytes, topic_device: str | None = None) -> Any:
        out = self.verifier.verify(topic_device or dev.id, data, NOW)
        if isinstance(out, Accepted):
            self.states[dev.id] = DeviceState(out.boot, out.seq, out.report_hash)
            self.history[(dev.id, out.boot, out.seq)] = data
        return out


@pytest.fixture
def world() -> World:
    return World()


def reason(out: Any) -> str:
    assert isinstance(out, Rejection), out
    return out.reason


def test_accepts_a_chain_of_reports(world: World) -> None:
    dev = Device()
    world.enroll(dev)
    for _ in range(3):
        out = world.submit(dev, dev.report())
        assert isinstance(out, Accepted) and not out.gap


def test_unknown_and_revoked_devices(world: World) -> None:
    dev = Device()
    assert reason(world.submit(dev, dev.report())) == "unknown_device"
    world.enroll(dev, revoked=True)
    assert reason(world.submit(dev, dev.report())) == "revoked_device"


def test_forged_signature(world: World) -> None:
    dev, mallory = Device(), Device()
    world.enroll(dev)
    # Mallory signs with her key but claims the victim's kid and topic.
    env = cbor2.loads(dev.report()).value
    forged = cose.sign1(env[2], mallory.key.secret, C.kid(dev.key.public))
    assert reason(world.submit(dev, forged)) == "bad_signature"


def test_kid_must_match_topic(world: World) -> None:
    a, b = Device(), Device()
    world.enroll(a)
    world.enroll(b)
    assert reason(world.submit(a, a.report(), topic_device=b.id)) == "kid_mismatch"


def test_replay_duplicate_and_gap(world: World) -> None:
    dev = Device()
    world.enroll(dev)
    first = dev.report()
    assert isinstance(world.submit(dev, first), Accepted)
    second = dev.report()
    assert isinstance(world.submit(dev, second), Accepted)
    # The same bytes again (QoS 1 redelivery, outbox replay): acknowledged, not stored.
    assert isinstance(world.submit(dev, second), Duplicate)
    # An older report that was never seen here is a replay.
    stale = Device()
    stale.key = dev.key
    assert reason(world.submit(dev, stale.report(seq=1, prev=b"\x00" * 16))) == "replay"
    # Skipping seq 2 is accepted and recorded as a gap.
    dev.seq = 3
    out = world.submit(dev, dev.report())
    assert isinstance(out, Accepted) and out.gap and "jumped" in out.gap_detail
    # prev that does not match the last accepted report: a rewritten history.
    out = world.submit(dev, dev.report(prev=b"\x01" * 16))
    assert isinstance(out, Accepted) and out.gap and "prev" in out.gap_detail


class ClusterWorld(World):
    """As a gateway of a cluster sees it: reports may arrive out of order, so late ones are checked
    against their accepted neighbours (``around``), and S only moves forward."""

    def __init__(self) -> None:
        super().__init__()
        self.verifier = Verifier(
            self.devices.get,
            self.states.get,
            lambda d, b, s: self.history.get((d, b, s)),
            self._board,
            Limits(max_bytes=1024),
            around=lambda d, s: {k[2]: v for k, v in self.history.items() if k[0] == d and s - 1 <= k[2] <= s + 1},
        )

    def submit(self, dev: Device, data: bytes, topic_device: str | None = None) -> Any:
        last = self.states.get(dev.id)
        out = self.verifier.verify(topic_device or dev.id, data, NOW)
        if isinstance(out, Accepted):
            if last is None or out.seq > last.seq:
                self.states[dev.id] = DeviceState(out.boot, out.seq, out.report_hash)
            self.history[(dev.id, out.boot, out.seq)] = data
        return out


def test_late_reports_are_accepted_once_and_leave_the_state_alone() -> None:
    world = ClusterWorld()
    dev = Device()
    world.enroll(dev)
    r = [dev.report() for _ in range(5)]
    outs = {i: world.submit(dev, r[i]) for i in (0, 2, 1, 4, 3)}  # two gateways, interleaved
    assert all(isinstance(o, Accepted) for o in outs.values()), outs
    assert outs[2].gap and "jumped" in outs[2].gap_detail  # it came first; nothing to chain to yet
    assert not outs[1].gap and not outs[3].gap  # each late one chains to its accepted predecessor
    assert world.states[dev.id].seq == 4
    assert isinstance(world.submit(dev, r[1]), Duplicate)
    assert isinstance(world.submit(dev, r[3]), Duplicate)


def test_a_late_report_that_its_accepted_successor_disowns_is_a_replay() -> None:
    world = ClusterWorld()
    dev = Device()
    world.enroll(dev)
    r = [dev.report() for _ in range(3)]
    assert isinstance(world.submit(dev, r[0]), Accepted)
    assert isinstance(world.submit(dev, r[2]), Accepted)
    # Signed with the device's key at seq 1, but seq 2 follows another report: a rolled-back clone.
    clone = Device()
    clone.key, clone.prev = dev.key, C.prev_hash(r[0])
    out = world.submit(dev, clone.report(seq=1, uptime=999))
    assert reason(out) == "replay" and "accepted seq 2 follows" in out.detail
    assert isinstance(world.submit(dev, r[1]), Accepted)  # the genuine one still gets in


def test_a_late_report_under_another_bootcount_is_a_replay() -> None:
    world = ClusterWorld()
    dev = Device()
    world.enroll(dev)
    r0, r1 = dev.report(), dev.report()
    dev.boot = 2
    r2, r3 = dev.report(), dev.report()
    for data in (r0, r1, r3):
        assert isinstance(world.submit(dev, data), Accepted)
    # seq never resets: seq 1 again under boot 2 is another report at an accepted seq.
    again = Device()
    again.key, again.boot, again.prev = dev.key, 2, C.prev_hash(r0)
    assert reason(world.submit(dev, again.report(seq=1))) == "replay"
    # A bootcount above the highest accepted report's, at a lower seq: the device state went back.
    ahead = Device()
    ahead.key, ahead.boot, ahead.prev = dev.key, 3, C.prev_hash(r1)
    out = world.submit(dev, ahead.report(seq=2))
    assert reason(out) == "replay" and "bootcount 3" in out.detail
    assert isinstance(world.submit(dev, r2), Accepted)


def test_bootcount_cannot_go_back(world: World) -> None:
    dev = Device()
    world.enroll(dev)
    dev.boot = 5
    assert isinstance(world.submit(dev, dev.report()), Accepted)
    dev.boot = 4
    assert reason(world.submit(dev, dev.report())) == "replay"


@pytest.mark.parametrize(
    "data,expected",
    [
        (b"\xd2\x84", "malformed_cbor"),
        (b"\x5a\xff\xff\xff\xff\x00", "malformed_cbor"),  # claims 4 GiB, has 1 byte
        (cbor2.dumps(cbor2.CBORTag(98, [])), "not_cose_sign1"),
        (cbor2.dumps([b"", {}, b"", b"\x00" * 64]), "unsupported_alg"),
    ],
)
def test_malformed(world: World, data: bytes, expected: str) -> None:
    dev = Device()
    world.enroll(dev)
    assert reason(world.submit(dev, data)) == expected


def test_oversize(world: World) -> None:
    dev = Device()
    world.enroll(dev)
    assert reason(world.submit(dev, b"\x00" * 1025)) == "oversize"


def test_implausible_capacity(world: World) -> None:
    dev = Device(board="esp32")
    world.enroll(dev)
    limit = boards.load("esp32").max_storage_bytes
    assert reason(world.submit(dev, dev.report(storage=(limit + 1, 0)))) == "implausible"
    dev.seq = 0
    assert reason(world.submit(dev, dev.report(storage=(100, 200)))) == "implausible"
    dev.seq = 0
    assert reason(world.submit(dev, dev.report(bw=(10**12, None)))) == "implausible"


def test_clock_skew_only_when_synced(world: World) -> None:
    dev = Device()
    world.enroll(dev)
    assert reason(world.submit(dev, dev.report(iat=int(NOW + 3600)))) == "clock_skew"
    dev.seq = 0
    # Old but within the outbox window is fine; unsynced reports carry no iat at all.
    assert isinstance(world.submit(dev, dev.report(iat=int(NOW - 86400))), Accepted)
    assert isinstance(world.submit(dev, dev.report()), Accepted)


def test_bad_claims(world: World) -> None:
    dev = Device()
    world.enroll(dev)
    payload = cbor2.dumps({C.UPTIME: 1, C.BOOTCOUNT: 1})  # no surge map
    data = cose.sign1(payload, dev.key.secret, C.kid(dev.key.public))
    out = world.submit(dev, data)
    assert reason(out) == "bad_claims" and "surge" in out.detail


def test_every_single_byte_flip_is_rejected(world: World) -> None:
    dev = Device()
    world.enroll(dev)
    good = dev.report()
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x01
        assert isinstance(world.submit(dev, bytes(bad)), Rejection), i
    assert isinstance(world.submit(dev, good), Accepted)
