"""bench/steady.py: the sustained run's rates from sampled counts (bench group 1)."""

from __future__ import annotations

import pytest

from bench.steady import steady_rates


def run(
    rate: float,
    batch_every: float,
    lag: float,
    seconds: float = 20.0,
    dt: float = 0.1,
    receipt_rate: float | None = None,
) -> list[tuple[float, int, int]]:
    """Stored rises at ``rate``; every ``batch_every`` s, what was stored ``lag`` s earlier becomes
    receipted at once (or what ``receipt_rate`` allows, for a pipeline that falls behind)."""
    out, done, step = [], 0, batch_every
    for i in range(int(seconds / dt) + 1):
        t = i * dt
        if t + 1e-9 >= step:
            can = int(rate * max(0.0, step - lag))
            done = can if receipt_rate is None else min(can, int(receipt_rate * step))
            step += batch_every
        out.append((t, int(rate * t), done))
    return out


@pytest.mark.parametrize("start", [5.0, 5.3, 5.9, 6.7])
def test_a_pipeline_that_keeps_up_measures_one_wherever_the_window_starts(start: float) -> None:
    r = steady_rates(run(3000, batch_every=2.0, lag=2.5), start, 19.95)
    assert r.steps >= 5
    assert r.receipted_per_s == pytest.approx(3000, rel=0.01)
    assert r.ratio == pytest.approx(1.0, rel=0.01)


def test_endpoints_of_the_staircase_would_misread_the_same_run() -> None:
    samples = run(3000, batch_every=2.0, lag=2.5)
    window = [s for s in samples if 6.05 <= s[0] <= 19.95]
    (_, sa, ra), (_, sb, rb) = window[0], window[-1]
    assert abs((rb - ra) / (sb - sa) - 1.0) > 0.05  # what steady_rates avoids


def test_a_pipeline_that_falls_behind_shows_it() -> None:
    r = steady_rates(run(3000, batch_every=2.0, lag=2.5, receipt_rate=2000), 9.0, 19.95)
    assert r.ratio == pytest.approx(2000 / 3000, rel=0.05)


def test_fewer_than_two_steps_falls_back_to_the_endpoints() -> None:
    r = steady_rates(run(3000, batch_every=30.0, lag=1.0), 5.0, 19.95)
    assert r.steps == 0 and r.receipted_per_s == 0 and r.stored_per_s == pytest.approx(3000, rel=0.01)


def test_a_window_without_samples_says_so() -> None:
    with pytest.raises(ValueError, match="too short"):
        steady_rates(run(3000, 2.0, 1.0, seconds=1.0), 5.0, 6.0)
