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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmact.errors import LmactError
from lmact.records import EpisodeRecord, Usage

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
# Returns closer than this are a tie: the same play gives the same sum, but a sum of
# float rewards taken in another order may differ in its last bits.
TIE_TOLERANCE = 1e-9


def mean_return(episodes: Sequence[EpisodeRecord]) -> float:
    return float(np.mean([e.total_return for e in episodes]))


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, from a fixed seed (so it is reproducible)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("no values to bootstrap")
    indices = _resample_indices(data.size, resamples)
    return _percentile_interval(data[indices].mean(axis=1), confidence)


# Index matrices this small (in entries) are kept: a report of thousands of runs bootstraps
# each run's few episodes with the same matrix, which the fixed seed makes anew each time.
_KEPT_INDEX_ENTRIES = 2_000_000


@functools.lru_cache(maxsize=16)
def _kept_indices(size: int, resamples: int) -> np.ndarray:
    indices = np.random.default_rng(BOOTSTRAP_SEED).integers(0, size, size=(resamples, size))
    indices.flags.writeable = False
    return indices


def _resample_indices(size: int, resamples: int) -> np.ndarray:
    """The resamples' indices into `size` values, drawn from the fixed seed: the same draws
    as `_resampled_means` makes from a new generator."""
    if size * resamples <= _KEPT_INDEX_ENTRIES:
        return _kept_indices(size, resamples)
    return np.random.default_rng(BOOTSTRAP_SEED).integers(0, size, size=(resamples, size))


def _resampled_means(data: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """The means of `resamples` resamples of `data`, each drawn with replacement."""
    return data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)


def _percentile_interval(means: np.ndarray, confidence: float) -> tuple[float, float]:
    """The two tail percentiles of `means`, as `np.percentile` computes them (its default
    linear method), from one partial sort of the four order statistics they need: a full
    `np.percentile` call cost most of a large report's time."""
    tail = (1 - confidence) / 2 * 100
    positions = [q / 100 * (means.size - 1) for q in (tail, 100 - tail)]
    bounds = [(math.floor(p), min(math.floor(p) + 1, means.size - 1)) for p in positions]
    ordered = np.partition(means, sorted({i for pair in bounds for i in pair}))
    low, high = (
        _lerp(float(ordered[below]), float(ordered[above]), position - below)
        for position, (below, above) in zip(positions, bounds, strict=True)
    )
    return low, high


def _lerp(low: float, high: float, fraction: float) -> float:
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
    steps = sum(e.steps for e in episodes)
    empty = sum(e.empty for e in episodes)
    invalid = empty + sum(e.invalid for e in episodes)
    illegal = invalid + sum(e.illegal for e in episodes)
    if steps == 0:
        return AnswerRates(0, 0.0, 0.0, 0.0)
    return AnswerRates(steps, illegal / steps, invalid / steps, empty / steps)


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


def total_cost(episodes: Sequence[EpisodeRecord]) -> float | None:
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
    value = mean_return(episodes)
    random = mean_return(random_episodes) if random_episodes else None
    expert = mean_return(expert_episodes) if expert_episodes else None
    rates = answer_rates(episodes)
    return EpisodeScores(
        episodes=len(episodes),
        mean_return=value,
        ci95=bootstrap_ci([e.total_return for e in episodes]),
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
        usage=sum((e.usage for e in episodes), Usage()),
        cost_usd=total_cost(episodes),
        unreadable_answers=sum(e.unreadable for e in episodes),
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
    `returns[r][e]` is replicate r's return at episode e (replicates may be of any length)."""
    length = max((len(replicate) for replicate in returns), default=0)
    points = []
    for episode in range(length):
        values = [replicate[episode] for replicate in returns if len(replicate) > episode]
        low, high = bootstrap_ci(values)
        points.append(CurvePoint(episode, float(np.mean(values)), low, high))
    return points


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
    (among arms pulled so far; ties count)."""
    totals: dict[str, list[float]] = {}
    greedy = 0
    for arm, reward in zip(chosen, earned, strict=True):
        if totals:
            means = {a: sum(v) / len(v) for a, v in totals.items()}
            greedy += means.get(arm, -1.0) >= max(means.values())
        totals.setdefault(arm, []).append(reward)
    return greedy / (len(chosen) - 1) if len(chosen) > 1 else 0.0


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
    a: Sequence[EpisodeRecord], b: Sequence[EpisodeRecord]
) -> list[tuple[EpisodeRecord, EpisodeRecord]]:
    """The episodes of `a` and `b` that started from the same seed, in `a`'s episode order.

    The k-th episode of a seed in `a` (in episode order) is paired with the k-th of that seed
    in `b`. An imitation or replay run plays each seed once; so does an in-context RL run on
    a bandit or with fresh resets. An in-context RL run that resets to the same start plays
    its replicate's seed in every episode, so there the k-th is episode k of the replicate:
    the same start at the same point of the learning."""
    first, second = _by_seed_occurrence(a), _by_seed_occurrence(b)
    return [(episode, second[key]) for key, episode in first.items() if key in second]


def _by_seed_occurrence(
    episodes: Sequence[EpisodeRecord],
) -> dict[tuple[int, int], EpisodeRecord]:
    seen: Counter[int] = Counter()
    keyed = {}
    for episode in sorted(episodes, key=lambda e: e.unit):
        keyed[(episode.seed, seen[episode.seed])] = episode
        seen[episode.seed] += 1
    return keyed


def paired_comparison(
    a: Sequence[EpisodeRecord], b: Sequence[EpisodeRecord], names: tuple[str, str] = ("A", "B")
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


def _seed_span(episodes: Sequence[EpisodeRecord]) -> str:
    seeds = sorted({episode.seed for episode in episodes})
    if not seeds:
        return "none"
    return str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]} to {seeds[-1]}"
