"""In-context RL's measures of a finished run, for its summary and the report: the learning
curve across replicates, the final 10% mean (normalized like an imitation score), regret
against the expert, Krishnamurthy et al.'s bandit measures, what the contexts held, the
held-out accuracy.

They read the run's episodes as `EpisodeResult`s and its steps as streams of the columns
they need (`StepColumns`): a report over 1,000 replicates of 100 rounds holds no step
record. What a report does not show is not computed (`wanted`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from itertools import groupby
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from lmact.errors import LmactError
from lmact.records import UnitKind
from lmact.regimes.base import DRAWN_CURVES, StepColumns
from lmact.regimes.icrl_context import run_environment
from lmact.regimes.icrl_facts import FactsRow, context_held
from lmact.scoring import (
    BanditMeasures,
    EpisodeResult,
    bandit_measures,
    bootstrap_ci,
    final_share_mean,
    learning_curve,
    normalized_score,
)
from lmact.store.base import FACTS_TEXT
from lmact.tasks import get_task

if TYPE_CHECKING:
    from lmact.regimes.icrl import IcrlConfig

EPISODES = (UnitKind.EPISODE,)
# The fields of a row that `bandit_measures` fills (any one wanted computes them all).
BANDIT_FIELDS = frozenset(BanditMeasures.__dataclass_fields__)
# The curves the papers draw, per episode index across replicates (points as the learning
# curve's): on bandits, Krishnamurthy et al.'s share of best-arm choices, cumulative regret
# and average reward so far; on every task, the cumulative regret against always right
# (classification: Monea et al.'s wrong predictions so far).
BANDIT_CURVES = frozenset({"best_arm_curve", "reward_curve"})  # reward: classification's too
REGRET_CURVE = "regret_curve"


def icrl_measures(
    config: IcrlConfig,
    episodes: Sequence[EpisodeResult],
    steps: StepColumns,
    baselines: dict[str, Sequence[EpisodeResult]],
    wanted: Collection[str] | None = None,
) -> dict[str, Any]:
    """`IcrlRegime.measures`: of those `wanted` (None: all), the learning curve, the final
    measures, what the contexts held per episode index, the bandit measures and the
    held-out accuracy (the cheap final measures always)."""

    environment = get_task(config.task).environment
    drawn = drawn_curves(environment) if wanted is not None and DRAWN_CURVES in wanted else ()

    def want(*names: str) -> bool:
        return wanted is None or any(name in wanted or name in drawn for name in names)

    returns = by_replicate(episodes)
    final = final_share_mean(returns)
    measures: dict[str, Any] = {
        "variant": config.variant,
        "replicates": len(returns),
        "horizon": max(map(len, returns), default=0),  # episodes per replicate
    }
    if want("learning_curve"):
        measures["learning_curve"] = [vars(point) for point in learning_curve(returns)]
    measures |= {"final_return": final, "final_normalized": None, "regret_vs_expert": None}
    if baselines.get("random") and baselines.get("expert"):  # over the same units
        random, expert = by_replicate(baselines["random"]), by_replicate(baselines["expert"])
        reference = final_share_mean(random), final_share_mean(expert)
        measures["final_normalized"] = normalized_score(final, *reference)
        measures["regret_vs_expert"] = float(
            np.mean([sum(e) - sum(m) for e, m in zip(expert, returns, strict=True)])
        )  # fmt: skip
    if want("context_length"):
        measures["context_length"] = context_lengths(steps)
    if environment == "bandit" and want(*BANDIT_FIELDS, *BANDIT_CURVES, REGRET_CURVE):
        rounds = bandit_rounds(config, episodes, steps)
        if want(*BANDIT_FIELDS):
            measures |= vars(bandit_measures(*rounds))
        if want(*BANDIT_CURVES, REGRET_CURVE):
            pulls, rewards, best, _, gap = rounds
            measures |= bandit_curves(pulls, rewards, best, gap)
    elif environment == "classification" and want(REGRET_CURVE, "reward_curve"):
        # A wrong label costs 1: the regret so far is the count of wrong predictions, and
        # the average reward so far the accuracy so far.
        measures[REGRET_CURVE] = _curve([_cumulative([1 - r for r in run]) for run in returns])
        measures["reward_curve"] = _running_mean_curve(returns)
    if config.eval_every is not None and want("held_out_accuracy"):
        measures["held_out_accuracy"] = held_out_accuracy(config.eval_every, returns, steps)
    return measures


def drawn_curves(environment: str) -> frozenset[str]:
    """The curves the papers draw of a task of `environment` (`DRAWN_CURVES`): on bandits,
    Krishnamurthy et al.'s best-arm share, cumulative regret and average reward; on
    classification, Monea et al.'s accuracy so far, held-out accuracy, wrong predictions so
    far and context length; elsewhere the learning curve."""
    if environment == "bandit":
        return BANDIT_CURVES | {REGRET_CURVE}
    if environment == "classification":
        return frozenset({"reward_curve", "held_out_accuracy", REGRET_CURVE, "context_length"})
    return frozenset({"learning_curve"})


def by_replicate(episodes: Sequence[EpisodeResult]) -> list[list[float]]:
    """The returns of a run's episodes, as one list per replicate in episode order."""
    keyed = sorted(map(attrgetter("chain", "episode", "total_return"), episodes))
    return [[value for _, _, value in chain] for _, chain in groupby(keyed, itemgetter(0))]


def context_lengths(steps: StepColumns) -> list[dict[str, float]]:
    """Per episode index, the mean over replicates of what its first step's context held:
    earlier episodes (`examples`) and the prompt's tokens as the model counted them. Each
    distinct record (a replicate's steps repeat a few hundred: how many earlier episodes,
    drawn how) is read and checked once, its steps counted by the store."""
    by_index: dict[int, list[tuple[int, int, int]]] = {}  # held, steps, their tokens
    groups = steps.first_step_groups(("episode", FACTS_TEXT), "prompt_tokens", EPISODES)
    for episode, text, count, tokens, chain in groups:
        facts = steps.read_facts(text, f"step 0 of episode {episode} (chain {chain})")
        held = context_held(FactsRow(chain, episode, 0, facts)) or 0
        by_index.setdefault(episode, []).append((held, count, tokens))
    return [
        {
            "episode": index,
            "examples": sum(held * count for held, count, _ in groups) / _steps(groups),
            "prompt_tokens": sum(tokens for _, _, tokens in groups) / _steps(groups),
        }
        for index, groups in sorted(by_index.items())
    ]


def _steps(groups: list[tuple[int, int, int]]) -> int:
    return sum(count for _, count, _ in groups)


def held_out_accuracy(
    every: int, returns: list[list[float]], steps: StepColumns
) -> list[dict[str, float]]:
    """Per evaluation point: the episode it preceded and the held-out accuracy, the mean
    across replicates with its 95% interval."""
    rewards: dict[tuple[int, int], list[float]] = {}
    read = steps.values(("chain", "episode", "reward"), (UnitKind.EVALUATION,))
    for chain, index, reward in read:
        rewards.setdefault((chain, index), []).append(reward)
    points = []
    for point in range(-(-max(len(r) for r in returns) // every)):
        accuracies = [
            sum(earned) / len(earned)
            for replicate in range(len(returns))
            if (earned := rewards.get((replicate, point)))
        ]
        if accuracies:
            low, high = bootstrap_ci(accuracies)
            mean = sum(accuracies) / len(accuracies)
            points.append({"episode": point * every, "accuracy": mean, "low": low, "high": high})
    return points


BanditRounds = tuple[list[list[str]], list[list[float]], list[str], list[list[str]], float]


def bandit_rounds(
    config: IcrlConfig, episodes: Sequence[EpisodeResult], steps: StepColumns
) -> BanditRounds:
    """A bandit run's rounds as `bandit_measures` takes them: each replicate's arms pulled
    and rewards (read from each round's one stored step, those columns only), best arm and
    arms (from the instance of its first round), and the gap."""
    pulls, rewards = _rounds(episodes, steps)
    first = {}  # each replicate's first round, as `episodes` order them
    for record in episodes:
        first.setdefault(record.chain, record)
    env = run_environment(config, config.task_spec())
    best, arms = {}, {}
    for replicate, record in first.items():  # the instance of the replicate's first round
        env.reset(record.seed)
        best[replicate], arms[replicate] = env.expert_action(), env.legal_actions()
    order = sorted(pulls)
    gap = float(config.task_spec().options.get("gap", 0.0))
    return (
        [pulls[r] for r in order], [rewards[r] for r in order],
        [best[r] for r in order], [arms[r] for r in order], gap,
    )  # fmt: skip


def bandit_curves(
    pulls: list[list[str]], rewards: list[list[float]], best: list[str], gap: float
) -> dict[str, list[dict[str, float]]]:
    """Per round, across replicates: the share that pulled the best arm, the cumulative
    regret (gap x pulls of worse arms so far) and the average reward so far."""
    chose_best = [[float(arm == top) for arm in run] for run, top in zip(pulls, best, strict=True)]
    worse = [_cumulative([1 - hit for hit in run]) for run in chose_best]
    return {
        "best_arm_curve": _curve(chose_best),
        REGRET_CURVE: _curve(worse, lambda _: gap),
        "reward_curve": _running_mean_curve(rewards),
    }


def _cumulative(values: Sequence[float]) -> list[float]:
    return [float(total) for total in np.cumsum(values)] if len(values) else []


def _running_mean_curve(rewards: Sequence[Sequence[float]]) -> list[dict[str, float]]:
    """The mean reward up to each episode: the running sums' curve, each point divided by
    its episode count."""
    return _curve([_cumulative(run) for run in rewards], lambda episode: 1 / (episode + 1))


def _curve(
    per_replicate: Sequence[Sequence[float]], scale: Callable[[int], float] | None = None
) -> list[dict[str, float]]:
    """The learning curve of the values, each point times `scale(episode)`. A curve of
    counts (presses, wins so far) is bootstrapped as whole numbers, at once, and scaled after:
    a percentile of c·X is c times X's, and the bootstrap of fractions point by point took a
    report half a minute."""
    points = [vars(point) for point in learning_curve(per_replicate)]
    if scale is None:
        return points
    return [
        {key: value * scale(point["episode"]) if key != "episode" else value
         for key, value in point.items()}
        for point in points
    ]  # fmt: skip


def _rounds(
    episodes: Sequence[EpisodeResult], steps: StepColumns
) -> tuple[dict[int, list[str]], dict[int, list[float]]]:
    """Each replicate's arms pulled and rewards, round by round, from the one stored step
    of each of `episodes` (in the order the store lists them, as `episodes`)."""
    rows = list(steps.values(("chain", "episode", "action", "reward"), EPISODES))
    keys = list(map(attrgetter("chain", "episode"), episodes))
    if [row[:2] for row in rows] != keys:  # other units stored, or some with other steps
        rows = _one_step_each(rows, keys)
    pulls: dict[int, list[str]] = {}
    rewards: dict[int, list[float]] = {}
    for chain, group in groupby(rows, itemgetter(0)):
        _, _, pulled, earned = zip(*group, strict=True)
        pulls.setdefault(chain, []).extend(pulled)
        rewards.setdefault(chain, []).extend(earned)
    return pulls, rewards


def _one_step_each(
    rows: list[tuple[Any, ...]], keys: list[tuple[int, int]]
) -> list[tuple[Any, ...]]:
    """The step of each round `keys` names, in their order; a round with no step stored, or
    with more than one, is a one-line error."""
    wanted = set(keys)
    found: dict[tuple[int, int], tuple[Any, ...]] = {}
    for row in rows:
        if row[:2] in wanted:
            if row[:2] in found:
                raise LmactError(f"round {row[1]} of replicate {row[0]} has more than one step")
            found[row[:2]] = row
    if len(found) != len(wanted):
        raise LmactError("a bandit round of the run has no stored step")
    return [found[key] for key in keys]
