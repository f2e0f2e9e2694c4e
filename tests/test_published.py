"""The values the papers publish: Krishnamurthy et al.'s measures as their paper defines
them, its baselines' table reproduced by lmact's scripted policies, and the published
values shown by `lmact report` beside the runs they correspond to."""

from __future__ import annotations

import hashlib
import json
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from helpers import lmact

from lmact.demos import DemoStore
from lmact.envs.bandit import ROUND_STRIDE
from lmact.errors import LmactError
from lmact.policies import SCRIPTED_POLICIES
from lmact.regimes import regime_of
from lmact.regimes.icrl import make_icrl_config
from lmact.regimes.icrl_context import run_environment
from lmact.regimes.icrl_measures import BANDIT_FIELDS
from lmact.report.published import PublishedResult, comparison, published_results, read_published
from lmact.runner import Runner
from lmact.scoring import bandit_measures
from lmact.store import RunStore
from lmact.tasks import get_task

KRISHNAMURTHY = [r for r in published_results() if r.paper and "Krishnamurthy" in r.paper.short]


def test_the_measures_are_the_papers_definitions() -> None:
    arms = ["a", "b", "c"]
    # Best arm "a" (gap 0.2: the others pay 0.4 on average, "a" 0.6). Ten rounds.
    pulls = [["b", "c", "a", "b", "b", "b", "a", "b", "b", "b"]]
    rewards = [[1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]]
    got = bandit_measures(pulls, rewards, ["a"], [arms], gap=0.2)
    # SuffFailFreq(T/2) covers rounds 5 … 10 counted from 1: "a" pulled at round 7.
    assert got.suffix_failure == 0.0
    late = [["b", "c", "b", "b", "a", "b", "b", "b", "b", "b"]]  # "a" only at round 5
    assert bandit_measures(late, rewards, ["a"], [arms], 0.2).suffix_failure == 0.0
    never = [["b", "c", "b", "a", "b", "b", "b", "b", "b", "b"]]  # "a" only at round 4
    assert bandit_measures(never, rewards, ["a"], [arms], 0.2).suffix_failure == 1.0
    # MedianReward: the mean reward 0.6 rescaled, (0.6 - 0.4) / 0.2.
    assert got.median_reward == pytest.approx(1.0)
    # K * MinFrac: "c" pulled once in ten rounds, three arms.
    assert got.k_min_frac == pytest.approx(0.3)
    # GreedyFrac over all ten rounds: rounds 1-3 pull untried arms (greedy); then the means
    # so far decide. Round 4 "b" (1.0 best), 5 "b" (b 1.0), 6 "b" (b .5 vs a 0, c 0),
    # 7 "a" (a 0 < b 2/3: not greedy), 8 "b" (b 2/3 vs a .5), 9 "b" (.75), 10 "b" (.8).
    assert got.greedy_frac == pytest.approx(9 / 10)


def test_a_greedy_policy_scores_greedy_frac_one(runner: Runner) -> None:
    config = make_icrl_config("bandit_hard", model="greedy", replicates=5)
    result = runner.run(config, 30)
    measures = regime_of(config).measures(
        config, result.episodes, runner.store.finished_steps(config.run_id), {}, BANDIT_FIELDS
    )
    assert measures["greedy_frac"] == 1.0


def test_ucb_c_is_the_ucb_policys_and_enters_the_runs_identity() -> None:
    default = make_icrl_config("bandit_hard", model="ucb")
    wider = make_icrl_config("bandit_hard", model="ucb", ucb_c=2.0)
    assert default.run_id != wider.run_id
    # A run made before the option existed keeps its id: the default is left out of it.
    added = default.added_fields
    assert added["ucb_c"] == 1.0
    before = {k: v for k, v in default.model_dump().items()
              if k not in default.not_in_id and not (k in added and v == added[k])}  # fmt: skip
    assert "ucb_c" not in before
    payload = json.dumps(before, sort_keys=True).encode()
    assert default.run_id == hashlib.sha256(payload).hexdigest()[:16]
    with pytest.raises(LmactError, match="ucb_c is the ucb policy's; give model ucb"):
        make_icrl_config("bandit_hard", model="ucb1", ucb_c=2.0)


def test_the_shipped_published_values_name_what_lmact_has() -> None:
    assert len(KRISHNAMURTHY) == 6
    for result in published_results():
        task = get_task(result.task)
        assert result.regime in ("icrl", "imitation") and task.name == result.task
        assert result.model in SCRIPTED_POLICIES, result.where
        # A value to reproduce has a tolerance; a paper's own agent's is shown for reference.
        assert set(result.measures) <= set(result.tolerance) or result.paper_agent is not None
        if result.regime == "icrl" and task.environment == "bandit":
            assert set(result.measures) <= BANDIT_FIELDS


def test_a_damaged_published_file_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "paper.toml"
    path.write_text(
        '[paper]\ncite = "x"\nshort = "x"\n[[result]]\nwhere = "t1"\nregime = "icrl"\n'
        'task = "bandit_hard"\nmodel = "ucb"\nmeasures = { greedy_frac = 0.5 }\n'
    )
    with pytest.raises(LmactError, match=r"paper\.toml.*no tolerance for greedy_frac") as caught:
        read_published(path)
    assert "\n" not in str(caught.value)
    path.write_text("[paper\n")
    with pytest.raises(LmactError, match=r"paper\.toml"):
        read_published(path)


def _reproduce(result: PublishedResult) -> dict[str, float]:
    """One published baseline's protocol, played by lmact in a store of its own."""
    with tempfile.TemporaryDirectory() as folder, RunStore(Path(folder) / "s.sqlite") as store:
        runner = Runner(store, DemoStore(Path(folder) / "demos"), progress=False)
        config = make_icrl_config(
            result.task, model=result.model, replicates=result.replicates or 1, **result.settings
        )
        played = runner.run(config, result.horizon or 1)
        steps = store.finished_steps(config.run_id)
        measures = regime_of(config).measures(config, played.episodes, steps, {}, BANDIT_FIELDS)
        runner.close()
    return {name: measures[name] for name in result.measures}


@pytest.mark.slow
def test_krishnamurthy_et_als_baselines_table_is_reproduced() -> None:
    """Figures 11 and 12's baseline rows, T = 100 and 1,000 replicates each (some two
    minutes: six runs of 100,000 rounds, two at a time)."""
    with ProcessPoolExecutor(max_workers=2) as pool:
        reproduced = list(pool.map(_reproduce, KRISHNAMURTHY))
    misses = [
        f"{result.task} {result.where} {name}: {got[name]:.3f} vs {value}"
        for result, got in zip(KRISHNAMURTHY, reproduced, strict=True)
        for name, value in result.measures.items()
        if abs(got[name] - value) > result.tolerance[name]
    ]
    assert misses == []


def test_the_report_shows_published_values_beside_the_runs_of_their_protocol(
    tmp_path: Path,
) -> None:
    common = ["--regime", "icrl", "--task", "bandit_hard", "--replicates", "4",
              "--store", "s.sqlite", "--cache-dir", "cache"]  # fmt: skip
    for model, rounds in (("ucb", "100"), ("thompson", "50")):
        done = lmact("run", *common, "--model", model, "--episodes", rounds, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    report = lmact("report", "--store", "s.sqlite", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    section = report.stdout.split("Published values beside these runs")[1]
    lines = [line for line in section.splitlines() if "Krishnamurthy" in line]
    # The ucb run of 100 rounds is figure 11's protocol; thompson over 50 rounds is not.
    assert len(lines) == 4 and all("UCB (C = 1)" in line and "| ucb |" in line for line in lines)
    median = next(line for line in lines if "median_reward" in line)
    assert "| 0.550 |" in median


def test_comparison_lines_say_whether_a_run_reproduces_a_value() -> None:
    row = {"regime": "icrl", "task": "bandit_hard", "model": "greedy", "horizon": 100,
           "run_id": "r", "replicates": 1000, "median_reward": 0.40, "suffix_failure": 0.60,
           "k_min_frac": 0.05, "greedy_frac": 1.0}  # fmt: skip
    lines = {line["measure"]: line for line in comparison([row])}
    assert lines["median_reward"]["within"] and not lines["suffix_failure"]["within"]
    assert comparison([{**row, "horizon": 99}]) == []


def test_the_bandits_buttons_are_the_papers_and_the_draw_stays_an_option() -> None:
    """The paper's fixed names by default; `--buttons drawn` plays (and resumes) the runs
    made before, whose ids it keeps."""
    fixed = make_icrl_config("bandit_hard", model="ucb")
    drawn = make_icrl_config("bandit_hard", model="ucb", buttons="drawn")
    assert (fixed.buttons, drawn.buttons) == ("fixed", None) and fixed.run_id != drawn.run_id
    assert make_icrl_config("classification", model="ucb").buttons is None  # not a bandit
    env = run_environment(fixed, get_task("bandit_hard"))
    bests = set()
    for instance in range(40):
        env.reset(instance * ROUND_STRIDE)
        assert env.legal_actions() == ["blue", "green", "red", "yellow", "purple"]
        bests.add(env.expert_action())
    assert len(bests) == 5  # the best button is drawn per instance
    easy = run_environment(make_icrl_config("bandit_easy", model="ucb"), get_task("bandit_easy"))
    easy.reset(0)
    assert easy.legal_actions() == ["blue", "green", "red", "yellow"]
    old = run_environment(drawn, get_task("bandit_hard"))
    layouts = set()
    for instance in range(10):
        old.reset(instance * ROUND_STRIDE)
        layouts.add(tuple(old.legal_actions()))
    assert len(layouts) > 1 and all(len(set(layout)) == 5 for layout in layouts)


def test_the_published_figure_draws_each_runs_value_beside_the_papers() -> None:
    from matplotlib.collections import LineCollection

    from lmact.report.plots import published_figure

    row = {"regime": "icrl", "task": "bandit_easy", "model": "ucb", "ucb_c": 1.0,
           "horizon": 100, "run_id": "r", "replicates": 1000, "median_reward": 0.9,
           "suffix_failure": 0.0, "k_min_frac": 0.1, "greedy_frac": 0.93}  # fmt: skip
    figure = published_figure([row, {**row, "task": "tic_tac_toe", "regime": "imitation"}])
    assert figure is not None
    (axes,) = figure.axes
    assert axes.get_title() == "bandit_easy"
    assert [bar.get_height() for bar in axes.patches] == [0.9, 0.0, 0.1, 0.93]
    ticks = [c.get_segments()[0][0][1] for c in axes.collections if isinstance(c, LineCollection)]
    assert ticks == [0.88, 0.00, 0.09, 0.94]  # figure 12's UCB row
    assert published_figure([{**row, "horizon": 50}]) is None
