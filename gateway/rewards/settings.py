"""The gateway config's [rewards] table: epoch length, the formula, where the contract is.

```toml
[rewards]
epoch_seconds = 3600          # one epoch per hour (Helium's is a day)
epochs_dir = "epochs"         # also write every closed epoch file here (relative to the config)
# contract = "0x..."          # SurgeRewards on a JSON-RPC chain; deployed and remembered when absent
# token = "0x..."             # its SurgeToken (with contract)
[rewards.formula]
budget = "1000000000000000000000"   # per epoch, smallest token unit (a string: TOML integers are 64-bit)
storage_weight = 1            # points per attested MiB
bandwidth_weight = 1          # points per attested KiB/s
flagged_permille = 500        # share of points kept by a flagged device
failed_challenge_permille = 0 # ... by one that failed a storage challenge
max_interval_s = 3600         # longest `interval` claim coverage is computed from
[rewards.formula.caps.esp32]
storage_bytes = 34359738368   # at most 32 GiB of an esp32's attested storage counts
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from gateway.rewards import formula as F

_KEYS = {"epoch_seconds", "formula", "epochs_dir", "contract", "token", "enabled"}


class RewardsConfigError(ValueError):
    """A [rewards] value is wrong; the message names the field."""


@dataclass(frozen=True)
class RewardsConfig:
    formula: F.Formula
    epoch_seconds: float = 3600.0
    epochs_dir: str | None = None
    contract: str | None = None
    token: str | None = None


def _address(doc: Mapping[str, Any], key: str) -> str | None:
    from gateway.rewards.epoch import checksum_owner

    value = doc.get(key)
    if value is None:
        return None
    addr = checksum_owner(value) if isinstance(value, str) else None
    if addr is None:
        raise RewardsConfigError("rewards.%s must be an EVM address (0x and 40 hex digits), got %r" % (key, value))
    return addr


def parse(doc: Any, config_path: str | None = None) -> RewardsConfig | None:
    """The [rewards] table, validated; None when absent or `enabled = false`."""
    if doc is None:
        return None
    if not isinstance(doc, Mapping):
        raise RewardsConfigError("rewards must be a table")
    unknown = set(doc) - _KEYS
    if unknown:
        raise RewardsConfigError("rewards: unknown field(s) %s" % ", ".join(sorted(unknown)))
    if doc.get("enabled", True) is False:
        return None
    seconds = doc.get("epoch_seconds", 3600)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 1 <= seconds <= 366 * 86400:
        raise RewardsConfigError("rewards.epoch_seconds must be a number of seconds, 1..31622400, got %r" % seconds)
    if "formula" not in doc:
        raise RewardsConfigError("rewards.formula is required (at least its budget)")
    try:
        formula = F.from_json(doc["formula"], "rewards.formula.")
    except F.FormulaError as exc:
        raise RewardsConfigError(str(exc)) from None
    epochs_dir = doc.get("epochs_dir")
    if epochs_dir is not None:
        if not isinstance(epochs_dir, str) or not epochs_dir:
            raise RewardsConfigError("rewards.epochs_dir must be a directory path")
        if config_path is not None and not Path(epochs_dir).is_absolute():
            epochs_dir = str(Path(config_path).parent / epochs_dir)
    contract, token = _address(doc, "contract"), _address(doc, "token")
    if token is not None and contract is None:
        raise RewardsConfigError("rewards.token needs rewards.contract")
    return RewardsConfig(
        formula=formula, epoch_seconds=float(seconds), epochs_dir=epochs_dir, contract=contract, token=token
    )
