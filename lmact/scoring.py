"""Scores of a run: mean return with a bootstrap interval, the score normalized between the
random and expert baselines on the same test seeds, and the rates of bad answers.

Answer kinds nest when counted, as in LMAct: an empty answer is also invalid, and an invalid
one is also illegal. So `illegal_rate` is the share of steps whose answer was not a legal
action at all, `invalid_rate` the share not even of the action format, `empty_rate` the
share with no answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmact.records import EpisodeRecord, Usage

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def mean_return(episodes: Sequence[EpisodeRecord]) -> float:
    return float(np.mean([e.total_return for e in episodes]))


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, from a fixed seed (so it is reproducible)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


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
