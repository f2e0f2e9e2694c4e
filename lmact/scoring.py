"""Scores of a run: mean return with a bootstrap interval, the score normalized between the
random and expert baselines on the same test seeds, the rates of bad answers, and the
paired comparison of two runs on the seeds both played.

Answer kinds nest when counted, as in LMAct: an empty answer is also invalid, and an invalid
one is also illegal. So `illegal_rate` is the share of steps whose answer was not a legal
action at all, `invalid_rate` the share not even of the action format, `empty_rate` the
share with no answer.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from lmact.bootstrap import BOOTSTRAP_RESAMPLES as BOOTSTRAP_RESAMPLES
from lmact.bootstrap import BOOTSTRAP_SEED, bootstrap_ci, percentile_interval, resampled_means
from lmact.bootstrap import CurvePoint as CurvePoint
from lmact.bootstrap import bootstrap_cis as bootstrap_cis
from lmact.bootstrap import learning_curve as learning_curve
from lmact.errors import LmactError
from lmact.records import EpisodeRecord, UnitKey, Usage

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


def final_share_mean(returns: Sequence[Sequence[float]], share: float = 0.1) -> float:
    """The mean return over the last `share` of each replicate's episodes (at least one)."""
    tails = [r[-max(1, math.ceil(len(r) * share)) :] for r in returns if r]
    return float(np.mean([value for tail in tails for value in tail]))


@dataclass(frozen=True)
class BanditMeasures:
    """Krishnamurthy et al.'s measures over the replicates of a bandit run, as their paper
    defines them ("Can large language models explore in-context?"), and the regret."""

    regret: float  # mean over replicates of gap x pulls of worse arms
    regret_low: float  # its 95% bootstrap interval across replicates
    regret_high: float
    # SuffFailFreq(T/2): share of replicates never pulling the best arm in rounds T/2 … T
    # (counted from 1)
    suffix_failure: float
    suffix_failure_low: float  # its 95% bootstrap interval across replicates
    suffix_failure_high: float
    k_min_frac: float  # K x the least-pulled arm's share of the T rounds, over replicates
    # GreedyFrac: share of all T rounds whose arm had the best mean so far (a round whose arm
    # was not pulled before counts: no arm has a better mean yet), over replicates
    greedy_frac: float
    # MedianReward: median over replicates of the mean reward rescaled so that always the
    # worse arms' mean is 0 and always the best arm's is 1: (mean - (0.5 - gap/2)) / gap
    median_reward: float


def bandit_measures(
    pulls: Sequence[Sequence[str]],
    rewards: Sequence[Sequence[float]],
    best: Sequence[str],
    arms: Sequence[Sequence[str]],
    gap: float,
) -> BanditMeasures:
    """The measures of replicates whose round t pulled `pulls[r][t]` and earned
    `rewards[r][t]`; `best[r]` and `arms[r]` are replicate r's best arm and all its arms,
    `gap` the instance's Δ (the best arm pays 0.5 + Δ/2, the others 0.5 - Δ/2)."""
    regret, failures, min_fracs, greedy, rescaled = [], [], [], [], []
    for chosen, earned, top, options in zip(pulls, rewards, best, arms, strict=True):
        rounds = len(chosen)
        regret.append(gap * sum(arm != top for arm in chosen))
        failures.append(top not in chosen[max(rounds // 2 - 1, 0) :])
        min_fracs.append(len(options) * min(chosen.count(arm) for arm in options) / rounds)
        greedy.append(_greedy_share(chosen, earned))
        rescaled.append((float(np.mean(earned)) - (0.5 - gap / 2)) / gap)
    regret_interval, failure_interval = bootstrap_cis([regret, [float(f) for f in failures]])
    return BanditMeasures(
        regret=float(np.mean(regret)),
        regret_low=regret_interval[0],
        regret_high=regret_interval[1],
        suffix_failure=float(np.mean(failures)),
        suffix_failure_low=failure_interval[0],
        suffix_failure_high=failure_interval[1],
        k_min_frac=float(np.mean(min_fracs)),
        greedy_frac=float(np.mean(greedy)),
        median_reward=float(np.median(rescaled)),
    )


def _greedy_share(chosen: Sequence[str], earned: Sequence[float]) -> float:
    """GreedyFrac of one replicate: the share of its rounds whose arm had the best mean
    reward so far among the arms pulled so far (ties count), or had not been pulled."""
    if not chosen:
        return 0.0
    rewards = np.asarray(earned, dtype=float)
    if not (np.all(rewards == np.round(rewards)) and np.abs(rewards).max() * len(rewards) < 2**52):
        return _greedy_share_summed(chosen, earned)
    # Whole rewards: each arm's running sums are exact in any order, so its mean before each
    # round is the mean `sum(rewards) / len(rewards)` gives, all rounds at once.
    _, arm = np.unique(np.asarray(chosen), return_inverse=True)
    rounds = np.arange(len(chosen))
    pulled = np.zeros((len(chosen), arm.max() + 1))
    pulled[rounds, arm] = 1
    won = pulled * rewards[:, None]
    before = np.cumsum(pulled, axis=0) - pulled  # pulls of each arm before each round
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (np.cumsum(won, axis=0) - won) / before
    best = np.where(before > 0, means, -np.inf).max(axis=1)
    fresh = before[rounds, arm] == 0
    return int((fresh | (means[rounds, arm] >= best)).sum()) / len(chosen)


def _greedy_share_summed(chosen: Sequence[str], earned: Sequence[float]) -> float:
    """`_greedy_share` round by round, each arm's total kept as `sum` adds its rewards, so
    the means are those of `sum(rewards) / len(rewards)`."""
    totals: dict[str, _Sum] = {}
    greedy = 0
    for arm, reward in zip(chosen, earned, strict=True):
        if arm not in totals:
            greedy += 1  # not pulled before
        else:
            means = {a: total.value() / total.count for a, total in totals.items()}
            greedy += means[arm] >= max(means.values())
        totals.setdefault(arm, _Sum()).add(reward)
    return greedy / len(chosen)


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
    unpaired = resampled_means(returns_a, rng, BOOTSTRAP_RESAMPLES) - resampled_means(
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
        unpaired_ci95=percentile_interval(unpaired, 0.95),
        a_ahead=float(np.mean((differences > 0) & ~tied)),
        b_ahead=float(np.mean((differences < 0) & ~tied)),
        tied=float(np.mean(tied)),
    )


def _seed_span(episodes: Sequence[EpisodeResult]) -> str:
    seeds = sorted({episode.seed for episode in episodes})
    if not seeds:
        return "none"
    return str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]} to {seeds[-1]}"
