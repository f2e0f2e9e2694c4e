"""Returns, bootstrap intervals, normalization and answer rates."""

from __future__ import annotations

import numpy as np
import pytest

from lmact.records import EpisodeRecord
from lmact.scoring import BOOTSTRAP_SEED, answer_rates, bootstrap_ci, normalized_score


def episode(steps: int, valid: int, illegal: int, invalid: int, empty: int) -> EpisodeRecord:
    return EpisodeRecord(
        episode=0,
        seed=0,
        total_return=0.0,
        steps=steps,
        terminated=True,
        valid=valid,
        illegal=illegal,
        invalid=invalid,
        empty=empty,
    )


def test_bootstrap_interval_is_reproducible_and_sensible() -> None:
    values = np.random.default_rng(1).normal(2.0, 1.0, size=40)
    low, high = bootstrap_ci(values)
    assert (low, high) == bootstrap_ci(values)
    assert low < values.mean() < high
    # The interval of the mean is about ±1.96 standard errors wide.
    standard_error = values.std(ddof=1) / np.sqrt(values.size)
    assert (high - low) == pytest.approx(2 * 1.96 * standard_error, rel=0.2)
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
    narrow = bootstrap_ci(np.tile(values, 4))
    assert narrow[1] - narrow[0] < high - low


def test_normalized_score() -> None:
    assert normalized_score(0.5, random=0.0, expert=1.0) == 0.5
    assert normalized_score(-1.0, random=-0.5, expert=0.5) == -0.5
    assert normalized_score(1.0, random=1.0, expert=1.0) is None


def test_rates_nest() -> None:
    rates = answer_rates([episode(10, 4, 3, 2, 1), episode(10, 10, 0, 0, 0)])
    assert rates.steps == 20
    assert rates.empty_rate == 1 / 20
    assert rates.invalid_rate == 3 / 20
    assert rates.illegal_rate == 6 / 20


def test_the_bootstrap_interval_is_numpys_percentile_of_the_seeded_resamples() -> None:
    """The kept index matrices and the partial sort give, bit for bit, the interval of a new
    seeded generator's resamples through `np.percentile` (what the committed results hold)."""
    rng = np.random.default_rng(7)
    for size in (1, 2, 4, 37, 400, 1000):  # 1000 x 10,000 entries: past the kept size
        for confidence in (0.95, 0.9, 0.5):
            values = rng.normal(size=size) if size % 2 else rng.integers(-1, 2, size=size) / 1.0
            means = values[
                np.random.default_rng(BOOTSTRAP_SEED).integers(0, size, size=(10_000, size))
            ].mean(axis=1)
            tail = (1 - confidence) / 2 * 100
            expected = tuple(float(bound) for bound in np.percentile(means, [tail, 100 - tail]))
            assert bootstrap_ci(values, confidence) == expected
            assert bootstrap_ci(values, confidence) == expected  # from the kept matrix
