"""In-context RL: episodes in order per replicate, contexts built from the replicate's own
earlier episodes and rewards, the variants' selections, the bandit baselines' measures."""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import StubModel, lmact

from lmact import api
from lmact.demos import DEMO_SEED_BASE, DemoStore
from lmact.envs.base import Observation
from lmact.errors import LmactError
from lmact.models.base import ModelCallError, ModelRequest, ModelResponse, TextPart
from lmact.policies import Policies
from lmact.records import UnitKey
from lmact.regimes.icrl import (
    REPLICATE_STRIDE,
    IcrlPlan,
    PastEpisode,
    _remember,
    _Replicate,
    by_replicate,
    make_icrl_config,
    select_context,
)
from lmact.regimes.icrl_facts import shown_context
from lmact.runner import Runner
from lmact.store import RunStore
from lmact.tasks import dataset_task, get_task, unsemantic_task

_ROUND = re.compile(r"^Action: (\w+)\nReward: ([01])$", re.MULTILINE)
_BUTTONS = re.compile(r"Buttons: ([\w, ]+)\.")


class RewardReader(StubModel):
    """Reads the rounds and rewards in its prompt and presses the button of the best mean
    (untried buttons first); `ignores_rewards`: always the first button listed."""

    def __init__(self, ignores_rewards: bool = False, fail_after: int | None = None) -> None:
        super().__init__("test/reader")
        self.ignores_rewards = ignores_rewards
        self.fail_after = fail_after  # answers given before every call fails
        self.calls = 0

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise ModelCallError("HTTP 400: stop here")
        text = "".join(p.text for p in request.parts if isinstance(p, TextPart))
        buttons = _BUTTONS.findall(text)[-1].split(", ")
        if self.ignores_rewards:
            return ModelResponse(text=buttons[0])
        seen: dict[str, list[int]] = {button: [] for button in buttons}
        for button, reward in _ROUND.findall(text):
            seen[button].append(int(reward))
        untried = [b for b in buttons if not seen[b]]
        choice = untried[0] if untried else max(buttons, key=lambda b: np.mean(seen[b]))
        return ModelResponse(text=choice, prompt_tokens=len(text) // 4, completion_tokens=1)


def reader_runner(store: RunStore, demo_store: DemoStore, client: StubModel) -> Runner:
    runner = Runner(store, demo_store, progress=False)
    runner.policies.register(client)
    return runner


def rise(returns: list[list[float]], first: int = 4) -> float:
    """The mean return of the second half of the episodes minus that of the first rounds
    (`first`: as many as bandit_easy has buttons, which a learner tries once each)."""
    half = len(returns[0]) // 2
    return float(np.mean([r[half:] for r in returns]) - np.mean([r[:first] for r in returns]))


def test_rewards_reach_the_context_a_reader_learns_and_an_ignorer_does_not(
    tmp_path: Path, demo_store: DemoStore
) -> None:
    with RunStore(tmp_path / "runs.sqlite") as store:
        curves = {}
        for ignores in (False, True):
            config = make_icrl_config(
                "bandit_easy", model="test/reader", replicates=24, max_tokens=7 + ignores
            )
            runner = reader_runner(store, demo_store, RewardReader(ignores))
            curves[ignores] = by_replicate(runner.run(config, 40).episodes)
            steps = store.steps(config.run_id)
            # Step e of a replicate held its e earlier rounds (naive, unlimited budget).
            assert [shown_context(s) for s in steps[:3]] == [(), (0,), (0, 1)]
    assert rise(curves[False]) > 0.15
    assert abs(rise(curves[True])) < 0.15
    assert np.mean(curves[False]) > np.mean(curves[True])


def test_a_run_replays_exactly_and_resumes_without_repeating_a_call(
    tmp_path: Path, demo_store: DemoStore
) -> None:
    config = make_icrl_config(
        "bandit_hard", model="test/reader", replicates=2, variant="stochastic", p_keep=0.5
    )
    with RunStore(tmp_path / "a.sqlite") as store:
        failing = RewardReader(fail_after=13)
        with pytest.raises(Exception, match="stop here"):
            reader_runner(store, demo_store, failing).run(config, 10)
        done = store.finished_episodes(config.run_id)
        assert 0 < len(done) < 20
        # A fresh process: the replicates' earlier rounds are read back from the store.
        resumed = RewardReader()
        result = reader_runner(store, demo_store, resumed).run(config, 10)
        assert resumed.calls == 20 - len(done)
        assert result.calls_cached == 0
        first = [(s.unit, s.action, s.reward, s.facts) for s in store.steps(config.run_id)]
    with RunStore(tmp_path / "b.sqlite") as store:
        reader_runner(store, demo_store, RewardReader()).run(config, 10)
        again = [(s.unit, s.action, s.reward, s.facts) for s in store.steps(config.run_id)]
    assert first == again
    assert {u for u, *_ in first} == {UnitKey(r, e) for r in (0, 1) for e in range(10)}


def plan_for(variant: str, p_keep: float = 0.1, contexts: int = 8, budget: int | None = None
             ) -> IcrlPlan:  # fmt: skip
    config = make_icrl_config(
        "bandit_easy", model="random", variant=variant, p_keep=p_keep, contexts=contexts
    )
    return IcrlPlan(config, get_task("bandit_easy"), Policies(None).for_run("random"), budget,
                    lambda unit: [])  # fmt: skip


def won(index: int, tokens: int = 10) -> PastEpisode:
    return PastEpisode(index, ((Observation(text="x"), "blue", 1.0),), 1.0, (), tokens)


def remembered(plan: IcrlPlan, episodes: list[PastEpisode]) -> _Replicate:
    """A replicate that has played `episodes`, in order."""
    state = _Replicate()
    for episode in episodes:
        _remember(plan, state, 0, episode)
    return state


def test_the_stochastic_variant_keeps_each_positive_episode_at_the_keep_rate() -> None:
    plan = plan_for("stochastic", p_keep=0.1)
    state = remembered(plan, [won(i) for i in range(2000)])
    kept = [len(select_context(plan, state, 0, 2000, step)) for step in range(20)]
    assert abs(np.mean(kept) / 2000 - 0.1) < 0.01
    assert len(set(map(tuple, [select_context(plan, state, 0, 2000, s) for s in (0, 1)]))) == 2
    assert select_context(plan, state, 0, 2000, 3) == select_context(plan, state, 0, 2000, 3)
    lost = PastEpisode(2000, ((Observation(text="x"), "red", 0.0),), 0.0, (), 10)
    positive = plan_for("naive-positive")
    assert 2000 not in select_context(
        positive, remembered(positive, [*state.episodes, lost]), 0, 2001, 0
    )


def test_approximate_contexts_only_grow_and_keep_to_the_budget() -> None:
    plan = plan_for("approximate", p_keep=0.3, contexts=4, budget=200)
    state = _Replicate()
    history: list[list[list[int]]] = []
    for index in range(60):
        _remember(plan, state, 0, won(index))
        history.append([list(c) for c in state.contexts])
    for before, after in itertools.pairwise(history):
        assert all(after[k][: len(before[k])] == before[k] for k in range(4))
    assert all(sum(state.episodes[i].tokens for i in c) <= 200 for c in state.contexts)
    assert any(len(c) > 0 for c in state.contexts)
    assert select_context(plan, state, 0, 60, 0) in state.contexts


@pytest.mark.parametrize("task", ["bandit_easy", "bandit_hard"])
def test_the_bandit_baselines_show_the_known_picture(runner: Runner, task: str) -> None:
    measures = {}
    for model in ("ucb1", "thompson", "greedy", "random"):
        config = make_icrl_config(task, model=model, replicates=40)
        measures[model] = runner.evaluate(config, 100).details
    for model in ("ucb1", "thompson"):
        assert measures[model]["suffix_failure"] <= 0.05
        assert measures[model]["regret"] < measures["random"]["regret"]
    if task == "bandit_hard":
        assert measures["greedy"]["suffix_failure"] >= 0.2
    assert 0.6 < measures["random"]["k_min_frac"] <= 1.0  # uniform flailing
    assert measures["greedy"]["greedy_frac"] > 0.9


def test_the_command_runs_icrl_and_refuses_options_of_other_regimes(tmp_path: Path) -> None:
    common = ["--task", "bandit_hard", "--store", "s.sqlite", "--cache-dir", "cache"]
    done = lmact("run", "--regime", "icrl", "--model", "ucb1", "--replicates", "3",
                 "--episodes", "20", "--json", *common, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["regime"] == "icrl" and summary["episodes"] == 60
    assert len(summary["learning_curve"]) == 20
    assert {"regret", "suffix_failure", "k_min_frac", "greedy_frac", "median_reward"} <= set(
        summary
    )
    for option in ({"variant": "stochastic"}, {"replicates": 2}):
        with pytest.raises(LmactError, match="does not apply to regime imitation"):
            api.run("bandit_hard", **option, store=tmp_path / "s.sqlite")
    refused = lmact("run", "--regime", "icrl", "--demos", "2", *common, cwd=tmp_path)
    assert refused.returncode == 2 and "--demos does not apply to --regime icrl" in refused.stderr


def test_the_classification_dataset_is_regenerated_byte_for_byte(tmp_path: Path) -> None:
    script = Path(__file__).parents[1] / "scripts" / "make_wordnet_dataset.py"
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    shipped = Path(__file__).parents[1] / "tasks" / "data" / "wordnet_glosses"
    for split in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / split).read_bytes() == (shipped / split).read_bytes()
    rows = [json.loads(line) for line in (shipped / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 1800 and len({row["label"] for row in rows}) == 12
    held_out = {json.loads(line)["text"] for line in (shipped / "test.jsonl").open()}
    assert not held_out & {row["text"] for row in rows}


class PromptRecorder(StubModel):
    """Answers the first label listed and keeps every prompt's text."""

    def __init__(self) -> None:
        super().__init__("test/recorder")
        self.texts: list[str] = []

    async def complete(self, request: ModelRequest) -> ModelResponse:
        text = "".join(p.text for p in request.parts if isinstance(p, TextPart))
        self.texts.append(text)
        labels = re.findall(r"Labels: (.*)", text)[-1].split(", ")
        return ModelResponse(text=labels[0], prompt_tokens=len(text) // 4)


@pytest.mark.parametrize("variant", ["naive", "supervised"])
def test_classification_contexts_show_feedback_or_gold_labels(
    tmp_path: Path, demo_store: DemoStore, variant: str
) -> None:
    config = make_icrl_config("classification", model="test/recorder", variant=variant,
                              replicates=1)  # fmt: skip
    assert config.reset == "fresh"  # a stream of inputs
    recorder = PromptRecorder()
    with RunStore(tmp_path / "runs.sqlite") as store:
        reader_runner(store, demo_store, recorder).run(config, 6)
    env = get_task("classification").make_environment()
    texts, golds = [], []
    for episode in range(5):
        env.reset(config.seed * REPLICATE_STRIDE + episode)
        texts.append(env.text)
        golds.append(env.expert_action())
    last = recorder.texts[-1]
    assert all(text in last for text in texts)  # the five earlier inputs, then the sixth
    if variant == "supervised":
        assert "Reward:" not in last
        assert re.findall(r"Action: ([\w.]+)\n", last) == golds
    else:
        shown = re.findall(r"Action: (\S+)\nReward: ([01])", last)
        assert [float(r) for _, r in shown] == [
            float(a == g) for (a, _), g in zip(shown, golds, strict=True)
        ]


def test_unsemantic_labels_are_meaningless_ids_and_a_bad_dataset_is_one_line(
    tmp_path: Path,
) -> None:
    env = unsemantic_task(get_task("classification")).make_environment()
    env.reset(0)
    assert env.legal_actions() == [f"L{k:02d}" for k in range(1, 13)]
    assert env.expert_action() in env.legal_actions()
    data = tmp_path / "mine.csv"
    rows = ["book a table,restaurant", "wake me at six,alarm", "find a bus,travel", "hi,greet"]
    data.write_text("utterance,intent\n" + "".join(f"{row}\n" for row in rows))
    spec = (Path(__file__).parents[1] / "tasks" / "classification.toml").read_text()
    spec = spec.replace('"data/wordnet_glosses/train.jsonl"', f'"{data}"')
    spec = spec.replace('"data/wordnet_glosses/test.jsonl"', f'"{data}"')
    spec = spec.replace("[options]", '[options]\ntext_field = "utterance"\nlabel_field = "intent"')
    (tmp_path / "mine.toml").write_text(spec.replace('name = "classification"', 'name = "mine"'))
    done = lmact("run", "--regime", "icrl", "--task", "mine.toml", "--model", "expert",
                 "--episodes", "4", "--replicates", "1", "--json", "--store", "s.sqlite",
                 "--cache-dir", "cache", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["mean_return"] == 1.0
    data.write_text("utterance,intent\nbook a table,\n")
    broken = lmact("run", "--regime", "icrl", "--task", "mine.toml", "--model", "random",
                   "--store", "s.sqlite", cwd=tmp_path)  # fmt: skip
    assert broken.returncode == 2 and broken.stderr.count("\n") == 1
    assert "example 1 lacks" in broken.stderr


def test_held_out_evaluations_use_the_context_and_never_enter_one(
    tmp_path: Path, demo_store: DemoStore
) -> None:
    config = make_icrl_config("classification", model="test/recorder", replicates=2,
                              eval_every=3, eval_size=8)  # fmt: skip
    recorder = PromptRecorder()
    with RunStore(tmp_path / "runs.sqlite") as store:
        runner = reader_runner(store, demo_store, recorder)
        summary = runner.evaluate(config, 7)
    assert summary.episodes == 14  # the evaluations are not episodes of the score
    env = get_task("classification").make_environment()
    held_out = []
    for example in range(8):
        env.reset(DEMO_SEED_BASE + example)
        held_out.append((env.text, env.expert_action()))
    first_label = env.legal_actions()[0]
    expected = sum(gold == first_label for _, gold in held_out) / 8
    points = summary.details["held_out_accuracy"]
    assert [p["episode"] for p in points] == [0, 3, 6]
    assert all(p["accuracy"] == pytest.approx(expected) for p in points)
    # Per replicate: 3 evaluations of 8 prompts and 7 episodes. The two replicates'
    # first evaluations, with nothing in context yet, are the same prompts: cached.
    assert summary.calls_made + summary.calls_cached == 2 * (3 * 8 + 7)
    evaluations = [t for t in recorder.texts if any(text in t for text, _ in held_out)]
    assert len(evaluations) == 2 * 3 * 8 - 8 and summary.calls_cached == 8
    for text in recorder.texts:  # a held-out input is never shown as an earlier attempt
        assert not any(f"Text: {held}\nLabels" in text.split("The current attempt")[0]
                       for held, _ in held_out)  # fmt: skip


def test_a_summarized_history_shows_counts_and_means_instead_of_rounds(
    tmp_path: Path, demo_store: DemoStore
) -> None:
    config = make_icrl_config("bandit_easy", model="test/reader", history="summary",
                              replicates=1)  # fmt: skip
    reader = RewardReader(ignores_rewards=True)
    texts: list[str] = []
    answer = reader.complete

    async def recording(request: ModelRequest) -> ModelResponse:
        texts.append("".join(p.text for p in request.parts if isinstance(p, TextPart)))
        return await answer(request)

    reader.complete = recording  # type: ignore[method-assign]
    with RunStore(tmp_path / "runs.sqlite") as store:
        reader_runner(store, demo_store, reader).run(config, 9)
        rewards = [s.reward for s in store.steps(config.run_id)]
    last = texts[-1]
    assert "Attempt" not in last and "Reward:" not in last
    lines = re.findall(r"- (\w+): chosen (\d+) times, mean reward ([\d.]+|n/a)", last)
    assert len(lines) == 4 and sum(int(n) for _, n, _ in lines) == 8
    pressed = {button: (int(n), mean) for button, n, mean in lines if int(n)}
    ((_, (count, mean)),) = pressed.items()  # the ignorer always presses the first
    assert count == 8 and float(mean) == pytest.approx(sum(rewards[:8]) / 8, abs=0.005)


def test_a_dataset_of_ones_own_runs_from_the_command_line(tmp_path: Path) -> None:
    data = tmp_path / "intents.jsonl"
    rows = [("book a table", "restaurant"), ("wake me at six", "alarm"), ("play jazz", "music")]
    data.write_text("".join(json.dumps({"q": q, "intent": i}) + "\n" for q, i in rows))
    args = ["run", "--regime", "icrl", "--task", "classification", "--dataset", str(data),
            "--text-field", "q", "--label-field", "intent", "--episodes", "3",
            "--replicates", "1", "--json", "--store", "s.sqlite",
            "--cache-dir", "cache"]  # fmt: skip
    done = lmact(*args, "--model", "expert", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["task"].startswith("classification-intents-") and summary["mean_return"] == 1.0
    # The same options through the API.
    options = {"regime": "icrl", "dataset": data, "text_field": "q", "label_field": "intent",
               "episodes": 3, "replicates": 1, "store": tmp_path / "s.sqlite",
               "cache_dir": tmp_path / "cache"}  # fmt: skip
    random = api.run("classification", model="random", **options)
    assert random["task"] == summary["task"]  # the same file: the same task
    ids = api.run("classification", model="expert", unsemantic_labels=True, **options)
    assert ids["task"] == summary["task"] + "-unsemantic"
    with RunStore(tmp_path / "s.sqlite") as store:
        runs = [r for r in store.runs() if r.config["task"].endswith("-unsemantic")]
        actions = {s.action for run in runs for s in store.steps(run.run_id)}
        assert runs and actions <= {"L01", "L02", "L03"}
    data.write_text(data.read_text() + json.dumps({"q": "call mum", "intent": "phone"}) + "\n")
    edited = api.run("classification", model="expert", **options)
    assert edited["task"] != summary["task"]  # edited: another task
    with pytest.raises(LmactError, match="lacks a text 'text'") as wrong:  # default fields
        api.run("classification", regime="icrl", dataset=data, model="random",
                store=tmp_path / "s.sqlite")  # fmt: skip
    assert "\n" not in str(wrong.value)


def test_the_learning_curve_plot_shows_each_runs_curve_and_band(
    runner: Runner, tmp_path: Path
) -> None:
    from PIL import Image

    from lmact.report.plots import learning_curve_figures, write_learning_curves
    from lmact.report.tables import curve_rows, report_rows

    runner.evaluate(make_icrl_config("bandit_hard", model="ucb1", replicates=4), 15)
    curves = curve_rows(report_rows(runner.store))
    (figure,) = learning_curve_figures(curves).values()
    best = figure.axes[0]  # the first of Krishnamurthy et al.'s three curves
    assert [axes.get_title() for axes in figure.axes] == [
        "best arm chosen", "cumulative regret", "average reward so far",
    ]  # fmt: skip
    for axes in figure.axes:
        assert axes.get_xlabel() == "round" and "95% interval" in axes.get_ylabel()
        assert len(axes.collections) == 3  # a band per line
    drawn = {line.get_label(): list(line.get_ydata()) for line in best.get_lines()}
    assert set(drawn) == {"ucb1 (baseline)", "random (baseline)", "expert (baseline)"}
    shares = [p["mean"] for p in curves if p["model"] == "ucb1" and p["curve"] == "best_arm_share"]
    assert drawn["ucb1 (baseline)"] == shares and len(shares) == 15
    (path,) = write_learning_curves(curves, tmp_path / "plots")
    assert path.name == "bandit_hard-learning-curves.png"
    image = Image.open(path).convert("RGB")
    assert image.size == (1650, 462)
    pixels = np.asarray(image).astype(int)
    coloured = int(((pixels.max(axis=2) - pixels.min(axis=2)) > 60).sum())
    assert coloured > 6000  # the lines and bands of three panels, not only axes and text


def test_the_context_length_is_reported_per_episode(tmp_path: Path, demo_store: DemoStore) -> None:
    config = make_icrl_config("classification", model="test/recorder", replicates=2)
    with RunStore(tmp_path / "runs.sqlite") as store:
        summary = reader_runner(store, demo_store, PromptRecorder()).evaluate(config, 5)
    lengths = summary.details["context_length"]
    assert [p["episode"] for p in lengths] == [0, 1, 2, 3, 4]
    assert [p["examples"] for p in lengths] == [0, 1, 2, 3, 4]  # naive: every earlier one
    tokens = [p["prompt_tokens"] for p in lengths]
    assert tokens == sorted(tokens) and tokens[0] > 0


def test_a_damaged_context_record_is_one_line_in_the_summary(tmp_path: Path) -> None:
    """Context lengths read each distinct stored record once (a replicate's steps repeat
    a few hundred), still checking every one: a damaged one is one line naming the store."""
    common = ["--regime", "icrl", "--task", "bandit_easy", "--model", "ucb1", "--episodes",
              "6", "--replicates", "2", "--store", "s.sqlite", "--cache-dir", "c"]  # fmt: skip
    first = lmact("run", *common, "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    lengths = json.loads(first.stdout)["context_length"]
    assert [point["examples"] for point in lengths] == [0, 1, 2, 3, 4, 5]
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        db.execute('UPDATE steps SET facts = \'{"context": ["x"]}\' WHERE episode = 3')
    again = lmact("run", *common, cwd=tmp_path)  # nothing to play: the summary reads it
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
    assert "episode 3" in again.stderr and "damaged" in again.stderr


def test_a_prompts_folder_rewords_in_context_rl_and_a_broken_one_is_one_line(
    tmp_path: Path, demo_store: DemoStore
) -> None:
    shipped = Path(__file__).parents[1] / "prompts" / "icrl"
    folder = tmp_path / "mine" / "icrl"
    folder.mkdir(parents=True)
    for template in shipped.glob("*.txt"):
        (folder / template.name).write_text(template.read_text())
    (folder / "reward.txt").write_text("Points earned: $reward\n")
    config = make_icrl_config("classification", model="test/recorder", replicates=1,
                              prompts_dir=str(tmp_path / "mine"))  # fmt: skip
    assert config.prompts != make_icrl_config("classification", model="random").prompts
    recorder = PromptRecorder()
    with RunStore(tmp_path / "runs.sqlite") as store:
        reader_runner(store, demo_store, recorder).run(config, 3)
    assert "Points earned: 0" in recorder.texts[-1] and "Reward:" not in recorder.texts[-1]
    (folder / "summary_line.txt").write_text("- $action: $times\n")
    broken = lmact("run", "--regime", "icrl", "--task", "bandit_hard", "--prompts",
                   str(tmp_path / "mine"), "--store", "s.sqlite", cwd=tmp_path)  # fmt: skip
    assert broken.returncode == 2 and broken.stderr.count("\n") == 1
    assert "summary_line.txt: unknown placeholder" in broken.stderr


def test_a_stream_is_never_cycled_a_run_that_would_is_refused_before_any_call(
    tmp_path: Path,
) -> None:
    rows = [{"text": f"input {i}", "label": "ab"[i % 2]} for i in range(6)]
    data = tmp_path / "six.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = {"regime": "icrl", "task": "classification", "dataset": data, "model": "random",
              "store": tmp_path / "s.sqlite", "cache_dir": tmp_path}  # fmt: skip
    with pytest.raises(LmactError, match="stream holds 6 inputs: episodes 7 would repeat"):
        api.run(**common, episodes=7)
    with pytest.raises(LmactError, match="held-out file holds 6 inputs: eval_size 7"):
        api.run(**common, episodes=6, eval_every=3, eval_size=7)
    assert api.results(tmp_path / "s.sqlite").episodes == []  # nothing was played
    summary = api.run(**common, episodes=6, replicates=2)
    assert summary["episodes"] == 12
    # Each replicate's six inputs are the stream's six, none twice.
    with RunStore(tmp_path / "s.sqlite") as store:
        run = next(r for r in store.runs() if r.config["model"] == "random")
        for replicate in (0, 1):
            seeds = [e.seed for u, e in store.finished_episodes(run.run_id).items()
                     if u.chain == replicate]  # fmt: skip
            task = get_task(run.config["task"]).make_environment()
            texts = set()
            for seed in seeds:
                task.reset(seed)
                texts.add(task.render("txt").text)
            assert len(texts) == 6


def test_a_dataset_of_long_labels_gets_the_answer_room_they_need(tmp_path: Path) -> None:
    long = "card_payment_wrong_exchange_rate"  # a Banking77 intent
    data = tmp_path / "intents.jsonl"
    rows = [{"text": "why is my rate off", "label": long}, {"text": "hi", "label": "greet"}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = dataset_task(get_task("classification"), data)
    config = make_icrl_config(task.name, model="random")
    assert config.max_tokens == task.max_answer_tokens >= len(long) // 2
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "hi", "label": "a"}) + "\n")
    assert dataset_task(get_task("classification"), short).max_answer_tokens == 8  # the spec's


def test_unlisted_labels_show_the_input_alone_and_a_constraint_still_holds_them(
    tmp_path: Path, demo_store: DemoStore
) -> None:
    """Monea et al.'s prompts show each input alone; the answer is held to the labels by
    the constraint, which every request carries."""
    seen: list[ModelRequest] = []

    class Unlisted(StubModel):
        def __init__(self) -> None:
            super().__init__("test/unlisted")

        async def complete(self, request: ModelRequest) -> ModelResponse:
            seen.append(request)
            return ModelResponse(text=request.choices[-1])

    config = make_icrl_config("classification", model="test/unlisted", labels="unlisted",
                              constrained=True, replicates=1)  # fmt: skip
    with RunStore(tmp_path / "runs.sqlite") as store:
        reader_runner(store, demo_store, Unlisted()).run(config, 4)
    labels = get_task("classification").make_environment().legal_actions()
    for request in seen:
        text = "".join(p.text for p in request.parts if isinstance(p, TextPart))
        assert "Labels:" not in text and "Text: " in text
        assert list(request.choices) == labels
    # The labels listed are the default, and the run made before the option keeps its id.
    listed = make_icrl_config("classification", model="test/unlisted", constrained=True)
    assert listed.labels is None and listed.run_id != config.run_id
    with pytest.raises(LmactError, match="labels unlisted hides a classification task's"):
        make_icrl_config("bandit_hard", model="ucb", labels="unlisted")
