"""Bench group 10, rewards: figures of the reward epochs and SurgeRewards claims.

Each figure lives in a function of its own, called from :func:`group_rewards`
(bench/run.py registers the group).

gas_per_claim: claim() gas on the in-process EVM against real reward trees
(gateway/rewards/gas.py), beside Uniswap's merkle-distributor (95,256 gas
worst case, 78,598 mean per claim at 100k leaves, its own published test
numbers; not re-measured here, hence "published" in the baseline text).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.rewards.gas import UNISWAP_LEAVES, UNISWAP_MEAN, UNISWAP_WORST, measure_claims

if TYPE_CHECKING:  # bench.run imports this module: no import cycle at run time
    from bench.run import Results, Sizes

GROUP = "10"


def gas_per_claim(r: Results, leaf_counts: tuple[int, ...], claims: int) -> None:
    for n in leaf_counts:
        g = measure_claims(n, claims)
        where = "%s leaves, %d-sibling proof" % ("{:,}".format(n), g.proof_length)
        base = "Uniswap merkle-distributor, %s leaves (published)" % "{:,}".format(UNISWAP_LEAVES)
        r.add(
            GROUP,
            "Gas per claim, first claim, %s" % where,
            g.first_mean,
            "gas",
            base + ", mean",
            UNISWAP_MEAN,
            "gas",
            note="mean of %d claims (min %d, max %d); claimed and the owner's token balance "
            "both written from zero; %.0f calldata bytes" % (g.claims, g.first_min, g.first_max, g.calldata_mean),
        )
        r.add(
            GROUP,
            "Gas per claim, first claim worst, %s" % where,
            float(g.first_max),
            "gas",
            base + ", worst",
            UNISWAP_WORST,
            "gas",
            note="max of %d claims" % g.claims,
        )
        r.add(
            GROUP,
            "Gas per claim, repeat claim (later epoch), %s" % where,
            g.repeat_mean,
            "gas",
            base + ", mean",
            UNISWAP_MEAN,
            "gas",
            note="mean of %d claims (min %d, max %d): the same owners claim the next epoch's "
            "higher cumulative amount" % (g.claims, g.repeat_min, g.repeat_max),
        )


def group_rewards(r: Results, s: Sizes, work: Path, ctx: dict[str, Any]) -> None:
    gas_per_claim(r, s.reward_leaves, s.reward_claims)
