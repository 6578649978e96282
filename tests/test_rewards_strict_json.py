"""Proof bundles, reward proofs and epoch files share one strict JSON reader (gateway/receipts.py):
duplicate keys and non-JSON are refused, each with its own error type and the reason."""

from __future__ import annotations

import pytest

from gateway import receipts
from gateway.rewards import epoch as E
from gateway.rewards import statement as S


@pytest.mark.parametrize(
    "parse, error, name",
    [
        (lambda raw: receipts.parse_bundle(raw, "b.json"), receipts.BundleError, "b.json is not JSON"),
        (lambda raw: S.parse_proof(raw, "p.json"), S.ProofError, "p.json is not JSON"),
        (E.parse, E.EpochError, "not JSON"),
    ],
)
def test_duplicates_and_non_json_refused(parse, error, name) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match="duplicate field 'root'"):
        parse(b'{"a": {"root": "00", "root": "11"}}')
    for raw in (b"{not json", b"\xff\xfe"):
        with pytest.raises(error, match=name):
            parse(raw)


def test_hex_fields_name_the_field() -> None:
    assert receipts.hex_field({"k": "00ff"}, "k", 2, S.ProofError) == b"\x00\xff"
    with pytest.raises(S.ProofError, match="field 'k' must be 3 bytes"):
        receipts.hex_field({"k": "00ff"}, "k", 3, S.ProofError)
    with pytest.raises(receipts.BundleError, match="field 'j' missing or not hex"):
        receipts.hex_field({"k": "00"}, "j", None, receipts.BundleError)
