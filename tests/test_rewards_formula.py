"""The reward formula and epoch files, sans-I/O: budget never exceeded, monotone in attested
capacity, identical bytes on every run, tampered files refused with the reason."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.chain import ChainKey
from gateway.receipts import canonical
from gateway.rewards import epoch as E
from gateway.rewards import formula as F

KEY = ChainKey.from_hex("59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")
OWNERS = [E.checksum_owner("0x%040x" % (i * 0x1111 + 7)) for i in range(1, 9)]
EPOCH_MS = 600_000  # 10 minutes: 10 reports expected at interval 60


def dev(
    i: int,
    owner: str | None,
    storage: int = 1 << 30,
    bw: int | None = 1 << 20,
    attested: int = 10,
    reports: int = 10,
    flags: tuple[str, ...] = (),
    failed: int = 0,
    board: str = "rpi-4",
) -> E.DeviceInputs:
    excluded = tuple((1, s, E.NOT_ATTESTED) for s in range(reports - attested))
    if owner is None or E.ineligible_reason(owner):
        excluded = tuple((1, s, E.ineligible_reason(owner or "") or "") for s in range(reports))
    return E.DeviceInputs(
        device="%016x" % i,
        owner=owner or "",
        board=board,
        reports=reports,
        attested=attested,
        interval_s=60,
        storage_bytes=storage,
        bw_up=bw,
        flags=flags,
        challenges_passed=0,
        challenges_failed=failed,
        challenges_timed_out=0,
        excluded=excluded,
    )


def record(
    devices: list[E.DeviceInputs], budget: int = 10**21, prev: dict[str, int] | None = None, f: F.Formula | None = None
) -> E.EpochRecord:
    return E.build(
        "gw-test",
        KEY.address,
        1,
        0,
        EPOCH_MS,
        f or F.Formula(budget=budget),
        [{"batch_seq": 1, "root": "00" * 32, "size": len(devices)}],
        devices,
        prev or {},
        E.ZERO_ROOT,
    )


def test_points_by_hand() -> None:
    f = F.Formula(budget=1000, storage_weight=2, bandwidth_weight=3, caps={"esp32": F.BoardCap(1 << 30, None)})
    a = F.Attested(
        "rpi-4",
        storage_bytes=10 * F.MIB + 5,
        bw_up=4 * F.KIB + 1,
        attested=5,
        interval_s=60,
        flagged=False,
        failed_challenge=False,
    )
    # (2 x 10 MiB + 3 x 4 KiB/s) x coverage 5 of 10 = 32 x 0.5
    assert F.points(f, a, EPOCH_MS) == 16
    capped = F.Attested("esp32", 4 << 30, None, 10, 60, False, False)
    assert F.points(f, capped, EPOCH_MS) == 2 * 1024  # 1 GiB cap, no bandwidth measured
    assert F.points(f, F.Attested("rpi-4", 10 * F.MIB, None, 10, 60, True, False), EPOCH_MS) == 10  # half kept
    assert F.points(f, F.Attested("rpi-4", 10 * F.MIB, None, 10, 60, True, True), EPOCH_MS) == 0
    # Claiming a day-long interval does not make one report full coverage: at most 3600 s counts.
    long = F.Attested("rpi-4", 10 * F.MIB, None, 1, 86400, False, False)
    assert F.expected_reports(f, 86400, 3 * 3600 * 1000) == 3 and F.points(f, long, 3 * 3600 * 1000) == 6


def test_allocation_by_hand_largest_remainder_ties_by_address() -> None:
    a, b, c = sorted(OWNERS[:3], key=F.owner_key)
    # 10 units over three equal shares: 3 each, the one left over to the lowest address.
    assert F.allocate(10, {c: 1, b: 1, a: 1}) == {a: 4, b: 3, c: 3}
    assert F.allocate(10, {a: 0, b: 0}) == {}
    assert F.allocate(7, {a: 2, b: 1}) == {a: 5, b: 2}  # 4.67 and 2.33: the larger remainder wins


@settings(max_examples=300, deadline=None)
@given(budget=st.integers(1, 10**30), pts=st.lists(st.integers(0, 10**12), min_size=1, max_size=8))
def test_allocation_never_exceeds_budget(budget: int, pts: list[int]) -> None:
    shares = F.allocate(budget, dict(zip(OWNERS, pts)))
    assert sum(shares.values()) <= budget
    if sum(pts) > 0:
        assert sum(shares.values()) == budget  # everything allocatable is allocated
        for o, p in zip(OWNERS, pts):
            exact = budget * p / sum(pts)
            assert abs(shares.get(o, 0) - exact) < 1.0 + exact * 1e-12  # within one unit of the exact share


figures = st.tuples(
    st.integers(0, 1 << 42),
    st.one_of(st.none(), st.integers(0, 1 << 30)),
    st.integers(0, 10),
    st.booleans(),
    st.sampled_from(OWNERS[:4]),
)


@settings(max_examples=200, deadline=None)
@given(
    devices=st.lists(figures, min_size=1, max_size=6),
    which=st.integers(0, 5),
    more_storage=st.integers(0, 1 << 40),
    more_bw=st.integers(0, 1 << 30),
    budget=st.integers(1, 10**24),
)
def test_monotone_in_attested_capacity(
    devices: list[tuple[int, int | None, int, bool, str]], which: int, more_storage: int, more_bw: int, budget: int
) -> None:
    """More attested storage or bandwidth for one device, all else equal, never lowers its owner's amount."""
    which %= len(devices)
    f = F.Formula(budget=budget, storage_weight=3, bandwidth_weight=2, caps={"esp32": F.BoardCap(1 << 41, 1 << 29)})

    def amounts(ds: list[tuple[int, int | None, int, bool, str]]) -> tuple[dict[str, int], list[int]]:
        inputs = [
            dev(i, o, storage=s, bw=b, attested=n, flags=("bw_overclaim",) if fl else (), board="esp32")
            for i, (s, b, n, fl, o) in enumerate(ds)
        ]
        out = E.compute(f, inputs, {}, EPOCH_MS)
        return dict(out.amounts), [p for _, p in out.device_points]

    before, pts_before = amounts(devices)
    s, b, n, fl, o = devices[which]
    more = list(devices)
    more[which] = (s + more_storage, None if b is None and more_bw == 0 else (b or 0) + more_bw, n, fl, o)
    after, pts_after = amounts(more)
    assert pts_after[which] >= pts_before[which]
    assert after.get(o, 0) >= before.get(o, 0)
    assert sum(after.values()) <= budget and sum(before.values()) <= budget


@settings(max_examples=50, deadline=None)
@given(
    devices=st.lists(figures, min_size=1, max_size=6),
    prev=st.dictionaries(st.sampled_from(OWNERS), st.integers(1, 10**25)),
)
def test_rerun_gives_identical_bytes_and_recompute_matches(
    devices: list[tuple[int, int | None, int, bool, str]], prev: dict[str, int]
) -> None:
    inputs = [dev(i, o, storage=s, bw=b, attested=n) for i, (s, b, n, fl, o) in enumerate(devices)]
    rec = record(inputs, prev=prev)
    if rec.header["leaves"] == 0:
        with pytest.raises(E.EpochError, match="at least one leaf"):
            E.seal(rec, KEY.sign_message)
        return
    raw = E.seal(rec, KEY.sign_message)
    # Devices in another order, the same epoch: the same bytes.
    assert E.seal(record(list(reversed(inputs)), prev=prev), KEY.sign_message) == raw
    assert E.recompute(raw) == []
    total = sum(int(a) for _, a in rec.body["outputs"]["amounts"])
    assert total <= 10**21


def sealed() -> bytes:
    devices = [
        dev(1, OWNERS[0]),
        dev(2, OWNERS[1], storage=3 << 30, attested=6),
        dev(3, "alice", storage=1 << 40),
        dev(4, None),
        dev(5, OWNERS[0], attested=0, bw=None, storage=0),
    ]
    return E.seal(record(devices, prev={OWNERS[2]: 5}), KEY.sign_message)


def test_epoch_file_contents() -> None:
    raw = sealed()
    doc = json.loads(raw)
    assert raw == canonical(doc) and not raw.endswith(b"\n")
    out = doc["body"]["outputs"]
    pts = dict(out["points"])
    assert pts["%016x" % 3] == 0 and pts["%016x" % 4] == 0 and pts["%016x" % 5] == 0  # labels and nothing attested
    by_dev = {d["device"]: d for d in doc["body"]["devices"]}
    assert {r for _, _, r in by_dev["%016x" % 3]["excluded"]} == {E.OWNER_NOT_ADDRESS}
    assert {r for _, _, r in by_dev["%016x" % 4]["excluded"]} == {E.NO_OWNER}
    assert len(by_dev["%016x" % 5]["excluded"]) == 10
    assert sum(int(a) for _, a in out["amounts"]) == int(out["allocated"]) == 10**21
    cum = dict(out["cumulative"])
    assert cum[OWNERS[2]] == "5" and set(cum) == {OWNERS[0], OWNERS[1], OWNERS[2]}
    # The root is over encodePacked(owner, cumulative) leaves sorted by address.
    leaves = sorted(((o, int(a)) for o, a in out["cumulative"]), key=lambda kv: bytes.fromhex(kv[0][2:]))
    assert doc["header"]["root"] == E.tree(leaves).root.hex()
    assert len(E.leaf_data(OWNERS[0], 1)) == 52 and E.leaf_data(OWNERS[0], 1)[-1] == 1


@pytest.mark.parametrize(
    "old,new,reason",
    [
        (b'"allocated":"1', b'"allocated":"2', "allocated"),
        (b'"storage_bytes":3221225472', b'"storage_bytes":4221225472', "body_sha256"),
        (b'"budget":"1000000000000000000000"', b'"budget":"2000000000000000000000"', "differs"),
        (b'"gateway_id":"gw-test"', b'"gateway_id":"gw-evil"', "signature is not the gateway's"),
        (b'"epoch":1', b'"epoch":2', "signature"),
    ],
)
def test_tampered_epoch_file_is_refused_with_the_reason(old: bytes, new: bytes, reason: str) -> None:
    raw = sealed()
    assert old in raw
    diffs = E.recompute(raw.replace(old, new, 1))
    assert diffs and any(reason in d for d in diffs), diffs


def test_non_canonical_and_malformed_files() -> None:
    raw = sealed()
    pretty = json.dumps(json.loads(raw), indent=1).encode()
    assert any("canonical" in d for d in E.recompute(pretty))
    assert E.recompute(b"not json")[0].startswith("not JSON")
    assert "duplicate" in E.recompute(raw[:-1] + b',"format":"x"}')[0]
    assert "format" in E.recompute(b'{"format":"surge-proof-bundle/1"}')[0]


def test_an_epoch_over_budget_cannot_be_produced() -> None:
    rec = record([dev(1, OWNERS[0]), dev(2, OWNERS[1])], budget=1000)
    body = json.loads(json.dumps(rec.body))
    body["outputs"]["amounts"][0][1] = str(int(body["outputs"]["amounts"][0][1]) + 1)  # one unit too many
    body["outputs"]["cumulative"] = body["outputs"]["amounts"]
    body["outputs"]["allocated"] = "1001"
    with pytest.raises(E.EpochError, match="more than the budget"):
        E.seal(E.EpochRecord(rec.header, body), KEY.sign_message)


def test_formula_validation_names_the_field() -> None:
    ok = F.from_json({"budget": "1000000000000000000000", "caps": {"esp32": {"storage_bytes": 1 << 30}}})
    assert ok.budget == 10**21 and ok.cap("esp32").storage_bytes == 1 << 30 and ok.cap("rpi-4") == F.BoardCap()
    assert F.from_json(ok.to_json(), "formula.") == ok
    for bad, msg in [
        ({}, "budget must be an integer"),
        ({"budget": 0}, "budget must be"),
        ({"budget": 1, "flagged_permille": 1001}, "flagged_permille"),
        ({"budget": 1, "weight": 2}, "unknown formula field"),
        ({"budget": 1, "version": 2}, "version 2 is not supported"),
        ({"budget": 1, "caps": {"esp32": {"storage": 1}}}, "caps.esp32"),
        ({"budget": 1.5}, "budget must be an integer"),
    ]:
        with pytest.raises(F.FormulaError, match=msg):
            F.from_json(bad)
