"""Scores of a run: mean return with a bootstrap interval, the score normalized between the
random and expert baselines on the same test seeds, the rates of bad answers, and the
paired comparison of two runs on the seeds both played.

Answer kinds nest when counted, as in LMAct: an empty answer is also invalid, and an invalid
one is also illegal. So `illegal_rate` is the share of steps whose answer was not a legal
action at all, `invalid_rate` the share not even of the action format, `empty_rate` the
share with no answer.
"""

from __future__ import annotations

import functools
import math
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from lmact.errors import LmactError
from lmact.records import EpisodeRecord, UnitKey, Usage

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
# Returns closer than this are a tie: the same play gives the same sum, but a sum of
# float rewards taken in another order may differ in its last bits.
TIE_TOLERANCE = 1e-9


class EpisodeResult(Protocol):
    """What scores and measures read of an episode: an `EpisodeRecord`, or what a run store
    reads of one without the rest of its record (`lmact.store.UnitResult`)."""

    @property
    def chain(self) -> int: ...
    @property
    def episode(self) -> int: ...  # the index of its unit
    @property
    def seed(self) -> int: ...
    @property
    def total_return(self) -> float: ...
    @property
    def unit(self) -> UnitKey: ...


def mean_return(episodes: Sequence[EpisodeResult]) -> float:
    return float(np.mean([e.total_return for e in episodes]))


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, from a fixed seed (so it is reproducible)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("no values to bootstrap")
    return _percentile_interval(bootstrap_means(data, resamples), confidence)


# Index matrices this small (in entries) are kept: a report of thousands of runs bootstraps
# each run's few episodes with the same matrix, which the fixed seed makes anew each time.
_KEPT_INDEX_ENTRIES = 2_000_000
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
    return _resampled_means(data, np.random.default_rng(BOOTSTRAP_SEED), resamples)


def _resampled_means(data: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """The means of `resamples` resamples of `data`, each drawn with replacement: index by
    index, a few million at a time, up to EXACT_BOOTSTRAP_ENTRIES; above, values of few
    distinct kinds (a bandit's 0 and 1; wins, draws and losses) by how many of each kind a
    resample holds, drawn from the multinomial law: the same law as drawing the indices,
    in a time that does not grow with the values (100,000 episodes: 10^9 indices)."""
    if data.size * resamples > EXACT_BOOTSTRAP_ENTRIES:
        kinds, counts = np.unique(data, return_counts=True)
        if kinds.size <= _COUNTED_KINDS:
            drawn = rng.multinomial(data.size, counts / data.size, size=resamples)
            return (drawn @ kinds) / data.size
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
    rows = max(1, _KEPT_INDEX_ENTRIES // size)
    for start in range(0, resamples, rows):
        yield rng.integers(0, size, size=(min(rows, resamples - start), size))


def _percentile_interval(means: np.ndarray, confidence: float) -> tuple[float, float]:
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


def normalized_score(value: float, random: float, expert: float) -> float | None:
    """(value - random) / (expert - random); None when the baselines do not differ."""
    if math.isclose(expert, random):
        return None
    return (value - random) / (expert - random)


def normalized_interval(
    interval: tuple[float, float], random: float, expert: float
) -> tuple[float, float] | None:
    """An interval of the mean return, normalized as the mean is (the baselines' means
    taken as exact); None when the baselines do not differ. The map is affine, so a
    percentile bootstrap interval maps onto that of the normalized mean."""
    low, high = (normalized_score(bound, random, expert) for bound in interval)
    if low is None or high is None:
        return None
    return min(low, high), max(low, high)  # an expert below random flips the order


@dataclass(frozen=True)
class AnswerRates:
    steps: int
    illegal_rate: float
    invalid_rate: float
    empty_rate: float


def answer_rates(episodes: Sequence[EpisodeRecord]) -> AnswerRates:
    return EpisodeTotals.of(episodes).rates()


@dataclass(frozen=True)
class EpisodeTotals:
    """What a score sums over episodes, besides their returns: from their records
    (`of`), or as a run store sums them (`lmact.report.tables`)."""

    episodes: int
    steps: int
    illegal: int
    invalid: int
    empty: int
    unreadable: int
    usage: Usage
    cost_usd: float | None  # None if any episode's cost is unknown

    @classmethod
    def of(cls, episodes: Sequence[EpisodeRecord]) -> EpisodeTotals:
        return cls(
            episodes=len(episodes),
            steps=sum(e.steps for e in episodes),
            illegal=sum(e.illegal for e in episodes),
            invalid=sum(e.invalid for e in episodes),
            empty=sum(e.empty for e in episodes),
            unreadable=sum(e.unreadable for e in episodes),
            usage=sum((e.usage for e in episodes), Usage()),
            cost_usd=total_cost(episodes),
        )

    def rates(self) -> AnswerRates:
        """The shares of bad answers, nested: an empty answer is also invalid, an invalid
        one also illegal."""
        invalid = self.empty + self.invalid
        illegal = invalid + self.illegal
        if self.steps == 0:
            return AnswerRates(0, 0.0, 0.0, 0.0)
        return AnswerRates(self.steps, illegal / self.steps, invalid / self.steps,
                           self.empty / self.steps)  # fmt: skip


@dataclass(frozen=True)
class EpisodeScores:
    """The scores of a set of test episodes; the baselines' are None when not available."""

    episodes: int
    mean_return: float
    ci95: tuple[float, float]
    normalized_score: float | None
    expert_return: float | None
    random_return: float | None
    steps: int
    illegal_rate: float
    invalid_rate: float
    empty_rate: float
    usage: Usage
    cost_usd: float | None  # None if any episode's cost is unknown
    unreadable_answers: int  # steps whose answer never came back readable (counted empty)


class HasCost(Protocol):
    @property
    def cost_usd(self) -> float | None: ...


def total_cost(episodes: Sequence[HasCost]) -> float | None:
    """The episodes' summed cost; None if there are none or any one's cost is unknown."""
    total = 0.0
    for episode in episodes:
        if episode.cost_usd is None:
            return None
        total += episode.cost_usd
    return total if episodes else None


def score_episodes(
    episodes: Sequence[EpisodeRecord],
    random_episodes: Sequence[EpisodeRecord] | None = None,
    expert_episodes: Sequence[EpisodeRecord] | None = None,
) -> EpisodeScores:
    """Scores of `episodes`, normalized when both baselines' episodes are given."""
    return score_returns(
        [e.total_return for e in episodes],
        EpisodeTotals.of(episodes),
        mean_return(random_episodes) if random_episodes else None,
        mean_return(expert_episodes) if expert_episodes else None,
    )


def score_returns(
    returns: Sequence[float] | np.ndarray,
    totals: EpisodeTotals,
    random: float | None = None,
    expert: float | None = None,
) -> EpisodeScores:
    """Scores of episodes from their returns (in order) and totals, normalized when both
    baselines' mean returns are given: what `score_episodes` computes, from what a run
    store can sum without reading each episode's record."""
    value = float(np.mean(returns))
    rates = totals.rates()
    return EpisodeScores(
        episodes=totals.episodes,
        mean_return=value,
        ci95=bootstrap_ci(returns),
        normalized_score=(
            normalized_score(value, random, expert)
            if random is not None and expert is not None
            else None
        ),
        expert_return=expert,
        random_return=random,
        steps=rates.steps,
        illegal_rate=rates.illegal_rate,
        invalid_rate=rates.invalid_rate,
        empty_rate=rates.empty_rate,
        usage=totals.usage,
        cost_usd=totals.cost_usd,
        unreadable_answers=totals.unreadable,
    )


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
        points += _curve_stretch(np.array(reached, dtype=float).T, start)
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
        if ways is None:  # sums exact: whole numbers
            sums = np.hstack([stretch @ c.T for c in _count_chunks(size, BOOTSTRAP_RESAMPLES)])
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
    `_index_chunks`), a row per resample, a few million entries at a time."""
    for rows in _index_chunks(size, resamples):
        offsets = (np.arange(len(rows)) * size)[:, None]
        counts = np.bincount((rows + offsets).ravel(), minlength=len(rows) * size)
        yield counts.reshape(len(rows), size).astype(float)


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


def final_share_mean(returns: Sequence[Sequence[float]], share: float = 0.1) -> float:
    """The mean return over the last `share` of each replicate's episodes (at least one)."""
    tails = [r[-max(1, math.ceil(len(r) * share)) :] for r in returns if r]
    return float(np.mean([value for tail in tails for value in tail]))


@dataclass(frozen=True)
class BanditMeasures:
    """Krishnamurthy et al.'s measures over the replicates of a bandit run."""

    regret: float  # mean over replicates of gap x pulls of worse arms
    regret_low: float  # its 95% bootstrap interval across replicates
    regret_high: float
    suffix_failure: float  # share of replicates never pulling the best arm in rounds T/2…T
    suffix_failure_low: float  # its 95% bootstrap interval across replicates
    suffix_failure_high: float
    k_min_frac: float  # K x the least-pulled arm's share, averaged over replicates
    greedy_frac: float  # share of rounds that pulled an arm of the best mean so far
    median_reward: float  # median over replicates of the mean reward


def bandit_measures(
    pulls: Sequence[Sequence[str]],
    rewards: Sequence[Sequence[float]],
    best: Sequence[str],
    arms: Sequence[Sequence[str]],
    gap: float,
) -> BanditMeasures:
    """The measures of replicates whose round t pulled `pulls[r][t]` and earned
    `rewards[r][t]`; `best[r]` and `arms[r]` are replicate r's best arm and all its arms."""
    regret, failures, min_fracs, greedy, medians = [], [], [], [], []
    for chosen, earned, top, options in zip(pulls, rewards, best, arms, strict=True):
        rounds = len(chosen)
        regret.append(gap * sum(arm != top for arm in chosen))
        failures.append(top not in chosen[rounds // 2 :])
        min_fracs.append(len(options) * min(chosen.count(arm) for arm in options) / rounds)
        greedy.append(_greedy_share(chosen, earned))
        medians.append(float(np.mean(earned)))
    regret_interval = bootstrap_ci(regret)
    failure_interval = bootstrap_ci([float(failed) for failed in failures])
    return BanditMeasures(
        regret=float(np.mean(regret)),
        regret_low=regret_interval[0],
        regret_high=regret_interval[1],
        suffix_failure=float(np.mean(failures)),
        suffix_failure_low=failure_interval[0],
        suffix_failure_high=failure_interval[1],
        k_min_frac=float(np.mean(min_fracs)),
        greedy_frac=float(np.mean(greedy)),
        median_reward=float(np.median(medians)),
    )


def _greedy_share(chosen: Sequence[str], earned: Sequence[float]) -> float:
    """Share of the rounds after the first whose arm had the best mean reward so far
    (among arms pulled so far; ties count). Each arm's total is kept as `sum` adds its
    rewards, so the means are those of `sum(rewards) / len(rewards)`."""
    totals: dict[str, _Sum] = {}
    greedy = 0
    for arm, reward in zip(chosen, earned, strict=True):
        if totals:
            means = {a: total.value() / total.count for a, total in totals.items()}
            greedy += means.get(arm, -1.0) >= max(means.values())
        totals.setdefault(arm, _Sum()).add(reward)
    return greedy / (len(chosen) - 1) if len(chosen) > 1 else 0.0


class _Sum:
    """A running `sum()` of floats, the same value as `sum()` of the list: added in order,
    with the compensation Python 3.12's `sum` of floats keeps (Neumaier's)."""

    __slots__ = ("compensation", "count", "total")
    _COMPENSATED = sys.version_info >= (3, 12)

    def __init__(self) -> None:
        self.total, self.compensation, self.count = 0.0, 0.0, 0

    def add(self, value: float) -> None:
        self.count += 1
        if not self._COMPENSATED:
            self.total += value
            return
        total = self.total + value
        if abs(self.total) >= abs(value):
            self.compensation += (self.total - total) + value
        else:
            self.compensation += (value - total) + self.total
        self.total = total

    def value(self) -> float:
        compensation = self.compensation
        if compensation and math.isfinite(compensation):
            return self.total + compensation
        return self.total


@dataclass(frozen=True)
class PairedComparison:
    """Two runs, A and B, on the test episodes both played from the same start: the
    difference of their returns A - B, episode by episode."""

    paired: int  # episodes paired by seed
    only_a: int  # A's episodes with no partner in B (not counted below)
    only_b: int
    mean_a: float  # mean return over the paired episodes
    mean_b: float
    mean_difference: float  # mean of A - B
    ci95: tuple[float, float]  # the paired percentile bootstrap interval of mean_difference
    # The interval of the same difference were the runs' episodes independent (each run
    # resampled on its own): what two separate intervals would say, for contrast.
    unpaired_ci95: tuple[float, float]
    a_ahead: float  # share of the paired episodes where A's return is the higher
    b_ahead: float
    tied: float


def pair_by_seed(
    a: Sequence[EpisodeResult], b: Sequence[EpisodeResult]
) -> list[tuple[EpisodeResult, EpisodeResult]]:
    """The episodes of `a` and `b` that started from the same seed, in `a`'s episode order.

    The k-th episode of a seed in `a` (in episode order) is paired with the k-th of that seed
    in `b`. An imitation or replay run plays each seed once; so does an in-context RL run on
    a bandit or with fresh resets. An in-context RL run that resets to the same start plays
    its replicate's seed in every episode, so there the k-th is episode k of the replicate:
    the same start at the same point of the learning."""
    first, second = _by_seed_occurrence(a), _by_seed_occurrence(b)
    return [(episode, second[key]) for key, episode in first.items() if key in second]


def _by_seed_occurrence(
    episodes: Sequence[EpisodeResult],
) -> dict[tuple[int, int], EpisodeResult]:
    seen: Counter[int] = Counter()
    keyed = {}
    for episode in sorted(episodes, key=lambda e: e.unit):
        keyed[(episode.seed, seen[episode.seed])] = episode
        seen[episode.seed] += 1
    return keyed


def paired_comparison(
    a: Sequence[EpisodeResult], b: Sequence[EpisodeResult], names: tuple[str, str] = ("A", "B")
) -> PairedComparison:
    """A - B over the episodes both played from the same seed (`pair_by_seed`), with the
    paired bootstrap interval of the mean difference (the conventions of `bootstrap_ci`).
    Sharing no seed is a one-line LmactError naming the runs by `names`."""
    pairs = pair_by_seed(a, b)
    if not pairs:
        raise LmactError(
            f"runs {names[0]} and {names[1]} share no test seed, so they cannot be paired "
            f"({names[0]} played seeds {_seed_span(a)}, {names[1]} {_seed_span(b)})"
        )
    returns_a = np.array([first.total_return for first, _ in pairs], dtype=float)
    returns_b = np.array([second.total_return for _, second in pairs], dtype=float)
    differences = returns_a - returns_b
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    unpaired = _resampled_means(returns_a, rng, BOOTSTRAP_RESAMPLES) - _resampled_means(
        returns_b, rng, BOOTSTRAP_RESAMPLES
    )
    tied = np.abs(differences) <= TIE_TOLERANCE
    return PairedComparison(
        paired=len(pairs),
        only_a=len(a) - len(pairs),
        only_b=len(b) - len(pairs),
        mean_a=float(returns_a.mean()),
        mean_b=float(returns_b.mean()),
        mean_difference=float(differences.mean()),
        ci95=bootstrap_ci(differences),
        unpaired_ci95=_percentile_interval(unpaired, 0.95),
        a_ahead=float(np.mean((differences > 0) & ~tied)),
        b_ahead=float(np.mean((differences < 0) & ~tied)),
        tied=float(np.mean(tied)),
    )


def _seed_span(episodes: Sequence[EpisodeResult]) -> str:
    seeds = sorted({episode.seed for episode in episodes})
    if not seeds:
        return "none"
    return str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]} to {seeds[-1]}"
