"""Owners at enrollment (EVM addresses checked and kept EIP-55, labels kept but not paid) and the
gateway config's [rewards] table (validated with errors that name the field)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway import config
from gateway.rewards import epoch as E
from gw_process import surge

ADDR = "0x5B38Da6a701c568545dCfcB03FcB875f56beddC4"  # EIP-55


def test_enrollment_owner_is_an_address_or_a_label(tmp_path: Path) -> None:
    db = str(tmp_path / "gw.db")
    args = ["gateway", "enroll", "--db", db, "--board", "esp32", "--fleet", "lab"]
    surge(*args, "--pubkey", "11" * 32, "--owner", ADDR.lower())
    out = surge(*args, "--pubkey", "12" * 32, "--owner", "alice").stdout
    assert "earns no rewards" in out
    assert "is a label, not an EVM address" in out and "owner_not_address" in out
    # Looks like an address but is not one: refused with what is wrong, nothing enrolled.
    for bad, reason in [
        (ADDR[:-1] + "5", "EIP-55 checksum that does not match"),
        (ADDR[:-1], "39 hex digits after 0x, not 40"),
        (ADDR + "0", "41 hex digits"),
        (ADDR[2:].lower(), "without the 0x prefix"),
    ]:
        typo = surge(*args, "--pubkey", "13" * 32, "--owner", bad, check=False)
        assert typo.returncode == 2 and reason in typo.stderr and typo.stderr.count("\n") == 1, typo.stderr
    owners = sorted(d["owner"] for d in json.loads(surge("gateway", "devices", "--db", db, "--json").stdout))
    assert owners == [ADDR, "alice"]  # the typos enrolled nothing
    assert E.checksum_owner(ADDR.upper().replace("0X", "0x")) == ADDR and E.checksum_owner("0x1234") is None


def write(tmp: Path, text: str) -> str:
    p = tmp / "gw.toml"
    p.write_text(text)
    return str(p)


def test_rewards_table(tmp_path: Path) -> None:
    cfg = config.load(
        write(
            tmp_path,
            '[gateway]\ndb = "g.db"\n[rewards]\nepoch_seconds = 60\nepochs_dir = "ep"\n'
            '[rewards.formula]\nbudget = "1000000000000000000000"\n'
            "[rewards.formula.caps.esp32]\nstorage_bytes = 1073741824\n",
        ),
        {},
    )
    assert cfg.rewards.epoch_seconds == 60 and cfg.rewards.formula.budget == 10**21
    assert cfg.rewards.epochs_dir == str(tmp_path / "ep") and cfg.rewards.formula.cap("esp32").storage_bytes == 1 << 30
    # Without a [gateway] table the top level is the gateway's, and [rewards] still its own table.
    flat = config.load(write(tmp_path, 'db = "g.db"\n[rewards.formula]\nbudget = 5\n'), {})
    assert flat.rewards.formula.budget == 5 and flat.rewards.epoch_seconds == 3600
    assert config.load(write(tmp_path, 'db = "g.db"\n'), {}).rewards is None
    for text, msg in [
        ("[rewards]\nepoch_seconds = 0\n[rewards.formula]\nbudget = 1\n", "epoch_seconds"),
        ("[rewards]\nepoch_seconds = 60\n", "rewards.formula is required"),
        ("[rewards]\ncolour = 1\n[rewards.formula]\nbudget = 1\n", "unknown field"),
        ("[rewards.formula]\nbudget = 1\nflagged_permille = 1001\n", "flagged_permille must be 0..1000"),
        ('[rewards]\ncontract = "0x12"\n[rewards.formula]\nbudget = 1\n', "rewards.contract"),
    ]:
        with pytest.raises(config.ConfigError, match=msg):
            config.load(write(tmp_path, text), {})


def test_surge_commands_do_not_load_the_chain_stack() -> None:
    """Every `surge` command (the device agent's too) registers `surge rewards`; that must not import
    web3 (~1 s each: 20 demo agents starting at once on 2 cores did not come online in 20 s)."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom agent.cli import main\ntry:\n    main(['agent', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('web3', 'eth_account') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip().endswith("[]"), out[-300:]


def test_flash_checks_the_owner_before_touching_the_board(tmp_path: Path) -> None:
    """`surge flash --gateway-db --owner` (firmware_shim/host/flash.py) applies the enrollment rule
    before the port is opened: an address-like typo is refused, a label is warned about."""
    db = str(tmp_path / "gw.db")
    port = str(tmp_path / "no-such-port")  # nothing is there: whatever gets past the owner fails on it
    args = [
        "flash",
        "--board",
        "esp32",
        "--port",
        port,
        "--config",
        str(tmp_path / "agent.json"),
        "--gateway-db",
        db,
        "--no-board-check",
        "--wait",
        "0",
    ]
    for bad, reason in [(ADDR[:-1] + "5", "EIP-55 checksum that does not match"), ("0x1234", "4 hex digits")]:
        proc = surge(*args, "--owner", bad, check=False)
        assert proc.returncode == 2 and "--owner: " in proc.stderr and reason in proc.stderr, proc.stderr
        assert "no-such-port" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    label = surge(*args, "--owner", "maker-1", check=False)
    assert label.returncode != 0 and "warning: owner 'maker-1' is a label" in label.stderr, label.stderr
    assert "earns no rewards" in label.stderr and "no-such-port" in label.stderr, label.stderr
    ok = surge(*args, "--owner", ADDR.lower(), check=False)
    assert "--owner" not in ok.stderr and "warning" not in ok.stderr and "no-such-port" in ok.stderr, ok.stderr
