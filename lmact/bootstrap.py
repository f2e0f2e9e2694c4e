"""The seeded percentile bootstrap behind every interval lmact reports: the interval of a
mean (`bootstrap_ci`), of several series of one length at once (`bootstrap_cis`), and of
each point of a learning curve (`learning_curve`).

Resamples are drawn from a fixed seed, so an interval is reproducible, and its bounds are
`np.percentile`'s (its default linear method) of the resampled means, bit for bit. What is
drawn is bounded: indices a few million at a time; past EXACT_BOOTSTRAP_ENTRIES resampled
values, values of few kinds resampled by counts, the same law in a time that does not grow
with the values; a curve's points that the same replicates reach resampled together.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, from a fixed seed (so it is reproducible)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("no values to bootstrap")
    return percentile_interval(bootstrap_means(data, resamples), confidence)


def bootstrap_cis(
    series: Sequence[Sequence[float]], confidence: float = 0.95
) -> list[tuple[float, float]]:
    """`bootstrap_ci` of each of several series of one length, their resamples drawn once
    (the seed is fixed, so each series draws the same indices either way)."""
    data = np.asarray(series, dtype=float)
    if data.ndim != 2 or data.shape[1] == 0:
        raise ValueError("no values to bootstrap")
    if data.shape[1] * BOOTSTRAP_RESAMPLES > EXACT_BOOTSTRAP_ENTRIES:
        return [bootstrap_ci(values, confidence) for values in data]
    chunks = _index_chunks(data.shape[1], BOOTSTRAP_RESAMPLES)
    # Series by series, each as `bootstrap_means` takes the means (a 3-d mean sums otherwise).
    means = np.hstack(
        [np.vstack([row[indices].mean(axis=1) for row in data]) for indices in chunks]
    )
    low, high = _percentile_intervals(means, confidence)
    return [(float(lo), float(hi)) for lo, hi in zip(low, high, strict=True)]


# Index matrices this small (in entries) are kept: a report of thousands of runs bootstraps
# each run's few episodes with the same matrix, which the fixed seed makes anew each time.
_KEPT_INDEX_ENTRIES = 2_000_000
# Indices drawn at a time past that (with the values they pick: 8 MB).
_CHUNK_ENTRIES = 500_000
# Up to this many resampled values (values x resamples), a bootstrap draws every index, the
# draws it always made; above, values of few kinds are resampled by counts (see below).
EXACT_BOOTSTRAP_ENTRIES = 50_000_000
# Values of at most this many distinct kinds are resampled by counts above that size.
_COUNTED_KINDS = 100


def bootstrap_means(data: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES) -> np.ndarray:
    """The means of `resamples` resamples of `data` (each of its size, with replacement),
    from the fixed seed (see `_resampled_means`)."""
    if data.size * resamples <= _KEPT_INDEX_ENTRIES:
        return data[_kept_indices(data.size, resamples)].mean(axis=1)
    return resampled_means(data, np.random.default_rng(BOOTSTRAP_SEED), resamples)


def resampled_means(data: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """The means of `resamples` resamples of `data`, each drawn with replacement: index by
    index, a few million at a time, up to EXACT_BOOTSTRAP_ENTRIES; above, values of few
    distinct kinds (a bandit's 0 and 1; wins, draws and losses) by how many of each kind a
    resample holds, drawn from the multinomial law: the same law as drawing the indices,
    in a time that does not grow with the values (100,000 episodes: 10^9 indices)."""
    if data.size * resamples > EXACT_BOOTSTRAP_ENTRIES:
        kinds, counts = np.unique(data, return_counts=True)
        if kinds.size <= _COUNTED_KINDS:
            drawn = rng.multinomial(data.size, counts / data.size, size=resamples)
            return (drawn * kinds).sum(axis=1) / data.size  # no BLAS: its threads spin
    chunks = _index_chunks(data.size, resamples, rng)
    return np.concatenate([data[indices].mean(axis=1) for indices in chunks])


@functools.lru_cache(maxsize=16)
def _kept_indices(size: int, resamples: int) -> np.ndarray:
    indices = np.random.default_rng(BOOTSTRAP_SEED).integers(0, size, size=(resamples, size))
    indices.flags.writeable = False
    return indices


def _index_chunks(
    size: int, resamples: int, rng: np.random.Generator | None = None
) -> Iterator[np.ndarray]:
    """The resamples' indices into `size` values, drawn from `rng` (default: the fixed
    seed's), a few rows at a time: the same draws as one matrix drawn at once (a generator's
    draws do not depend on how they are split), in a few million entries of memory."""
    if rng is None and size * resamples <= _KEPT_INDEX_ENTRIES:
        yield _kept_indices(size, resamples)
        return
    rng = rng or np.random.default_rng(BOOTSTRAP_SEED)
    rows = max(1, _CHUNK_ENTRIES // size)
    for start in range(0, resamples, rows):
        yield rng.integers(0, size, size=(min(rows, resamples - start), size))


def percentile_interval(means: np.ndarray, confidence: float) -> tuple[float, float]:
    """The two tail percentiles of `means`, as `np.percentile` computes them (its default
    linear method), from one partial sort of the four order statistics they need: a full
    `np.percentile` call cost most of a large report's time."""
    low, high = _percentile_intervals(means.reshape(1, -1), confidence)
    return float(low[0]), float(high[0])


def _percentile_intervals(means: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """`_percentile_interval` of each row of `means` (a column per resample)."""
    tails = _tails(means.shape[1], confidence)
    ordered = np.partition(means, sorted({i for _, *pair in tails for i in pair}), axis=1)
    low, high = (
        _lerp(ordered[:, below], ordered[:, above], at - below) for at, below, above in tails
    )
    return low, high


def _tails(size: int, confidence: float) -> list[tuple[float, int, int]]:
    """Where `np.percentile` finds the two tail percentiles among `size` sorted values: the
    position, and the order statistics it interpolates between."""
    tail = (1 - confidence) / 2 * 100
    positions = [q / 100 * (size - 1) for q in (tail, 100 - tail)]
    return [(p, math.floor(p), min(math.floor(p) + 1, size - 1)) for p in positions]


def _lerp(low: np.ndarray, high: np.ndarray, fraction: float) -> np.ndarray:
    """numpy's interpolation: from the nearer end, so that one at an end is exact."""
    if fraction >= 0.5:
        return high - (high - low) * (1 - fraction)
    return low + (high - low) * fraction


@dataclass(frozen=True)
class CurvePoint:
    """The mean return at one episode index across replicates, with a 95% interval."""

    episode: int
    mean: float
    low: float
    high: float


def learning_curve(returns: Sequence[Sequence[float]]) -> list[CurvePoint]:
    """Per episode index, the mean of the replicates' returns and its bootstrap interval;
    `returns[r][e]` is replicate r's return at episode e (replicates may be of any length).

    Each point is `bootstrap_ci` of its values. The points that the same replicates reach
    share their resamples' indices (the seed is fixed), so they are bootstrapped together."""
    lengths = sorted({len(replicate) for replicate in returns if len(replicate)})
    points: list[CurvePoint] = []
    start = 0
    for end in lengths:  # the episodes start … end-1 are reached by the same replicates
        reached = [replicate[start:end] for replicate in returns if len(replicate) >= end]
        # A row a point, contiguous: its mean then sums as np.mean of its values does.
        points += _curve_stretch(np.ascontiguousarray(np.array(reached, dtype=float).T), start)
        start = end
    return points


# A stretch's points bootstrapped at once, at most: its resampled sums are this many.
_CURVE_BLOCK_ENTRIES = 4_000_000


def _curve_stretch(values: np.ndarray, first: int) -> list[CurvePoint]:
    """The points of `values[e]`, the replicates' returns at episode `first + e`."""
    means = values.mean(axis=1)  # row by row, as np.mean of each point's values
    size = values.shape[1]
    if size == 1:  # every resample is the one value: the interval is that value
        return [CurvePoint(first + e, float(v), float(v), float(v)) for e, v in enumerate(means)]
    if not _whole(values) or size * BOOTSTRAP_RESAMPLES > EXACT_BOOTSTRAP_ENTRIES:
        return [
            CurvePoint(first + e, float(mean), *bootstrap_ci(row))
            for e, (mean, row) in enumerate(zip(means, values, strict=True))
        ]
    ways = _resample_ways(size, BOOTSTRAP_RESAMPLES)
    points = []
    block = max(1, _CURVE_BLOCK_ENTRIES // (BOOTSTRAP_RESAMPLES if ways is None else len(ways[0])))
    for start in range(0, len(values), block):
        stretch = values[start : start + block]
        if ways is None:  # sums exact: whole numbers (in float32 too, while below 2**24)
            small = np.abs(stretch).max() * size < 2**24
            stretch = stretch.astype(np.float32 if small else float)
            chunks = _kept_counts(size, BOOTSTRAP_RESAMPLES) or _count_chunks(
                size, BOOTSTRAP_RESAMPLES
            )
            sums = np.hstack([(stretch @ c.T).astype(float) for c in chunks])
            low, high = _counted_intervals(sums, None, size)
        else:
            low, high = _counted_intervals(stretch @ ways[0].T, ways[1], size)
        points += [
            CurvePoint(first + start + e, float(means[start + e]), float(lo), float(hi))
            for e, (lo, hi) in enumerate(zip(low, high, strict=True))
        ]
    return points


def _whole(values: np.ndarray) -> bool:
    """Whether the resampled sums of `values` rows are exact whatever their order: whole
    numbers, small enough (and no negative zero, whose sign a sum may lose)."""
    return bool(
        np.all(values == np.round(values))
        and np.abs(values).max() * values.shape[1] < 2**52
        and not np.any(np.signbit(values) & (values == 0))
    )


def _count_chunks(size: int, resamples: int) -> Iterator[np.ndarray]:
    """How many times each of `size` values is drawn in each resample (the draws of
    `_index_chunks`), a row per resample, a few million entries at a time (float32: exact
    up to 2**24, and a product with float64 values is float64)."""
    for rows in _index_chunks(size, resamples):
        offsets = (np.arange(len(rows)) * size)[:, None]
        counts = np.bincount((rows + offsets).ravel(), minlength=len(rows) * size)
        yield counts.reshape(len(rows), size).astype(np.float32)


# Counts this small (in entries) are kept between curves: the runs of a report mostly have
# as many replicates, so their curves resample alike (1,000 replicates: 40 MB).
_KEPT_COUNT_ENTRIES = 10_000_000


@functools.lru_cache(maxsize=1)
def _kept_counts(size: int, resamples: int) -> list[np.ndarray] | None:
    if size * resamples > _KEPT_COUNT_ENTRIES:
        return None
    chunks = list(_count_chunks(size, resamples))
    for chunk in chunks:
        chunk.flags.writeable = False
    return chunks


@functools.lru_cache(maxsize=16)
def _resample_ways(size: int, resamples: int) -> tuple[np.ndarray, np.ndarray] | None:
    """For a few values, the resamples' counts (`_count_chunks`) of each way they are
    drawn, and how many resamples draw each way: 5 values are drawn 126 ways, so a point's
    10,000 resamples sum as 126. None for more values: then about every resample is its own."""
    if math.comb(2 * size - 1, size) >= resamples:
        return None
    ways, weights = np.unique(np.vstack(list(_count_chunks(size, resamples))), axis=0,
                              return_counts=True)  # fmt: skip
    ways.flags.writeable = False
    return ways, weights


def _counted_intervals(
    sums: np.ndarray, weights: np.ndarray | None, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """`_percentile_intervals` of the resampled means `sums / size`, each row's sum in
    column j standing for `weights[j]` resamples (None: one each): the same order
    statistics, so the same intervals bit for bit."""
    if weights is None:
        return _percentile_intervals(sums / size, 0.95)
    tails = _tails(int(weights.sum()), 0.95)
    order = np.argsort(sums, axis=1)
    ordered = np.take_along_axis(sums, order, axis=1)
    reached = np.cumsum(weights[order], axis=1)  # resamples up to each sorted sum
    rows = np.arange(len(sums))
    found = {
        k: ordered[rows, (reached <= k).sum(axis=1)] / size
        for k in {i for _, *pair in tails for i in pair}
    }
    low, high = (_lerp(found[below], found[above], at - below) for at, below, above in tails)
    return low, high
