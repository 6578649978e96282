"""Rates of a sustained run from samples of two cumulative counts (bench group 1).

The stored count rises smoothly; the receipted count is a staircase, one
step per batch whose receipts the broker has acknowledged. A slope taken
between two arbitrary instants of a staircase is off by up to a whole step
divided by the window (with ~2 s batches at 3,000 reports/s, one step is
~6,000 reports: +-13% over a 15 s window), so the receipted rate is taken
between the first and the last step inside the window, where the
staircase's average rate is exact, and the stored rate over the same
interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Sample = tuple[float, int, int]  # (time, stored, receipted)


@dataclass(frozen=True)
class SteadyRates:
    stored_per_s: float
    receipted_per_s: float
    start: float  # the interval the rates are taken over
    end: float
    steps: int  # receipted steps inside it (0: fewer than two steps, endpoints used)

    @property
    def ratio(self) -> float:
        return self.receipted_per_s / self.stored_per_s if self.stored_per_s else 0.0


def steady_rates(samples: Sequence[Sample], start: float, end: float) -> SteadyRates:
    """Rates over [start, end]; ``samples`` in time order, sampled at a fixed interval."""
    inside = [i for i, s in enumerate(samples) if start <= s[0] <= end]
    if len(inside) < 2:
        raise ValueError(
            "%d samples between %.1f and %.1f: the run is too short to measure" % (len(inside), start, end)
        )
    rises = [i for i in inside if i > 0 and samples[i][2] > samples[i - 1][2]]
    steps = len(rises) - 1 if len(rises) >= 2 else 0
    a, b = (samples[rises[0]], samples[rises[-1]]) if steps else (samples[inside[0]], samples[inside[-1]])
    span = b[0] - a[0]
    stored, receipted = (b[1] - a[1]) / span, (b[2] - a[2]) / span
    return SteadyRates(stored, receipted, a[0], b[0], steps)
