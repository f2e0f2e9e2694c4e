"""Runs as Inspect eval logs (`lmact export RUN… --format inspect --out DIR`), written with
inspect_ai's own log API, so that `inspect view` and whatever reads Inspect logs opens them.

One log a run, one sample an episode. A sample's messages are the episode as the model was
shown it: the system message, the prompt's stable prefix (preamble and demonstrations, or
an in-context RL context) once, then a user message a step (what the step's prompt ended
with: the observation, as text or image, and what followed it) and the step's completion.
Steps are rebuilt as the viewer rebuilds them (`lmact.report.viewer.view_run`), and each
completion's metadata says whether the rebuilt prompt's hash is the stored one. The return
and, where the run has both baselines, the normalized score are the scores; the numbers of
the log's results are lmact's own (`run_row`), so they match `lmact report`."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lmact import __version__
from lmact.demos import DemoStore
from lmact.errors import LmactError
from lmact.models.base import ImagePart, Part, TextPart, turns
from lmact.records import EpisodeRecord, StepRecord, Usage
from lmact.regimes import regime_of
from lmact.report.export import episode_counts, step_fields, unit_fields
from lmact.report.tables import Baselines, readable_config, resolve_runs, run_row, scored_units
from lmact.report.viewer import view_run
from lmact.report.viewer_page import ViewedEpisode, ViewedRun, ViewedStep, unit_anchor
from lmact.scoring import mean_return, normalized_score
from lmact.store import RunRecord, RunStore

INSTALL_HINT = 'Inspect export needs inspect_ai: pip install "lmact[inspect]"'
RETURN, NORMALIZED = "return", "normalized_score"  # the scores' names, as lmact names them


def _inspect_log_api() -> Any:
    try:
        import inspect_ai.log
        import inspect_ai.model
    except ImportError:
        raise LmactError(INSTALL_HINT) from None
    return inspect_ai


def export_inspect(
    store: RunStore, run_ids: Sequence[str], out: Path, demo_store: DemoStore
) -> list[Path]:
    """The runs `run_ids` (each may be a prefix; none: every run) as Inspect eval logs
    under `out`, one a run; the paths written."""
    inspect_ai = _inspect_log_api()
    runs = resolve_runs(store, run_ids)
    out.mkdir(parents=True, exist_ok=True)
    # A run's units are read for its row and again for its baselines' returns: kept between.
    paths, reads = [], Baselines(store, keep_runs=True)
    for run in runs:
        row = run_row(store, run, reads) or {}
        row.update(_baseline_returns(store, run, reads))
        log = eval_log(view_run(store, run, demo_store), row)
        path = out / log_file_name(run)
        inspect_ai.log.write_eval_log(log, str(path), format="eval")
        paths.append(path)
    return paths


def _baseline_returns(store: RunStore, run: RunRecord, reads: Baselines) -> dict[str, float]:
    """The mean returns of the run's random and expert baselines over its units, where
    stored: what normalizes its episodes' returns, as its row's score."""
    config = readable_config(run)
    if config is None:
        return {}
    baselines = reads.of(config, scored_units(store, run, config, reads))
    return {f"{policy}_return": mean_return(units) for policy, units in baselines.items() if units}


def log_file_name(run: RunRecord) -> str:
    """As Inspect names its logs (time, task, id), so its listing sorts them the same way."""
    created = datetime.fromtimestamp(run.created, UTC).strftime("%Y-%m-%dT%H-%M-%S")
    task = str(run.config.get("task", "run")).replace("_", "-")
    return f"{created}+00-00_{task}_{run.run_id}.eval"


def inspect_model_name(run: RunRecord) -> str:
    """Inspect names a model provider/model; lmact's own policies (random, scripted) get
    lmact as their provider."""
    model = str(run.config.get("model", "unknown"))
    return model if "/" in model else f"lmact/{model}"


def eval_log(view: ViewedRun, row: dict[str, Any]) -> Any:
    """The Inspect log of a viewed run; `row`: its report row (empty if none finished),
    with its baselines' mean returns (`random_return`, `expert_return`) where stored."""
    from inspect_ai.log import EvalLog, EvalPlan, EvalPlanStep, EvalStats

    run, model = view.run, inspect_model_name(view.run)
    samples = [_sample(view, episode, row, model) for episode in view.episodes]
    usage = _usage([episode.record for episode in view.episodes])
    regime = str(run.config.get("regime", "unknown"))
    return EvalLog(
        status="success",
        eval=_spec(view, samples, model),
        plan=EvalPlan(name="lmact", steps=[EvalPlanStep(solver=f"lmact {regime}")]),
        results=_results(row, len(samples)),
        stats=EvalStats(
            started_at=_iso(run.created),
            completed_at=_iso(run.created),
            model_usage={model: usage} if samples else {},
        ),
        samples=samples,
    )


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def _spec(view: ViewedRun, samples: list[Any], model: str) -> Any:
    from inspect_ai.log import EvalConfig, EvalDataset, EvalSpec

    run = view.run
    task = str(run.config.get("task", "unknown"))
    labels = ", ".join(str(run.config[k]) for k in ("regime", "observation") if k in run.config)
    return EvalSpec(
        eval_id=run.run_id,
        run_id=run.run_id,
        created=_iso(run.created),
        task=task,
        task_id=run.run_id,
        task_display_name=f"{task} ({labels})" if labels else task,
        task_args=_json_safe(run.config),
        dataset=EvalDataset(
            name=task, samples=len(samples), sample_ids=[sample.id for sample in samples]
        ),
        model=model,
        config=EvalConfig(),
        packages={"lmact": __version__},
        metadata={
            "lmact_version": __version__,
            "lmact_config": _json_safe(run.config),
            "lmact_facts": _json_safe(run.facts),
            "finished_episodes": view.finished,
            "notes": list(view.notes),
        },
    )


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _results(row: dict[str, Any], samples: int) -> Any:
    """lmact's scores of the run as Inspect's results: the mean return and the normalized
    score (with their 95% intervals), and the regime's own measures as metadata."""
    from inspect_ai.log import EvalMetric, EvalResults, EvalScore

    def score(name: str, mean: str, low: str, high: str) -> EvalScore:
        metrics = {key: EvalMetric(name=key, value=row[column])
                   for key, column in (("mean", mean), ("ci95_low", low), ("ci95_high", high))
                   if row.get(column) is not None}  # fmt: skip
        return EvalScore(name=name, scorer=name, scored_samples=row.get("episodes"),
                         metrics=metrics)  # fmt: skip

    scores = []
    if row.get("mean_return") is not None:
        scores.append(score(RETURN, "mean_return", "ci95_low", "ci95_high"))
    if row.get("normalized_score") is not None:
        scores.append(score(NORMALIZED, "normalized_score", "normalized_low", "normalized_high"))
    measures = {key: value for key, value in row.items()
                if isinstance(value, int | float) and not isinstance(value, bool)}  # fmt: skip
    return EvalResults(total_samples=samples, completed_samples=samples, scores=scores,
                       metadata={"lmact_row": _json_safe(measures)})  # fmt: skip


def _sample(view: ViewedRun, episode: ViewedEpisode, row: dict[str, Any], model: str) -> Any:
    from inspect_ai.log import EvalSample, condense_sample
    from inspect_ai.model import ModelOutput

    record = episode.record
    scored = _is_scored(view, record)
    messages = _messages(episode, model)
    first_answer = next((i for i, m in enumerate(messages) if m.role == "assistant"
                         and m.source == "generate"), len(messages))  # fmt: skip
    last = episode.steps[-1].stored.completion if episode.steps else ""
    sample = EvalSample(
        id=unit_anchor(record.unit),
        epoch=1,
        input=messages[:first_answer] or "",
        target="",
        messages=messages,
        output=ModelOutput.from_content(model, last),
        scores=_scores(record, row, scored),
        metadata=_episode_metadata(episode, scored),
        model_usage={model: _usage([record])},
    )
    # Shared content (the prefix's images and long texts) kept once, as attachments.
    return condense_sample(sample)


def _is_scored(view: ViewedRun, record: EpisodeRecord) -> bool:
    if view.config is None:
        return True  # a run this release cannot read: every finished unit, as its row
    return regime_of(view.config).is_scored(view.config, record.unit)


def _scores(record: EpisodeRecord, row: dict[str, Any], scored: bool) -> dict[str, Any]:
    from inspect_ai.scorer import Score

    scores = {RETURN: Score(value=record.total_return)}
    random, expert = row.get("random_return"), row.get("expert_return")
    if random is not None and expert is not None and scored:
        normalized = normalized_score(record.total_return, random, expert)
        if normalized is not None:
            scores[NORMALIZED] = Score(value=normalized)
    return scores


def _episode_metadata(episode: ViewedEpisode, scored: bool) -> dict[str, Any]:
    record = episode.record
    return {
        "label": episode.label, **unit_fields(record), "scored": scored,
        **episode_counts(record),
        "prompts_verified": sum(step.verified for step in episode.steps),
        "note": episode.note, "facts": _json_safe(record.facts),
    }  # fmt: skip


def _usage(records: Sequence[EpisodeRecord | StepRecord]) -> Any:
    """Token usage in Inspect's terms: its input tokens leave out the cached and
    cache-written ones (lmact's prompt tokens count them), as its own providers do."""
    from inspect_ai.model import ModelUsage

    total = sum((r.usage for r in records), Usage())
    costs = [r.cost_usd for r in records]
    return ModelUsage(
        input_tokens=total.prompt_tokens - total.cached_tokens - total.cache_write_tokens,
        output_tokens=total.completion_tokens,
        total_tokens=total.prompt_tokens + total.completion_tokens,
        input_tokens_cache_read=total.cached_tokens,
        input_tokens_cache_write=total.cache_write_tokens,
        reasoning_tokens=total.reasoning_tokens,
        total_cost=None if any(c is None for c in costs) else sum(costs),
    )


def _messages(episode: ViewedEpisode, model: str) -> list[Any]:
    """The episode as a conversation: the system message and the prefix where they first
    appear (again only if a step's differ), then each step's prompt end and completion."""
    from inspect_ai.model import ChatMessageSystem

    messages: list[Any] = []
    shown: tuple[str, tuple[Part, ...]] | None = None
    for step in episode.steps:
        asked = step.asked
        if asked is not None and (asked.system, asked.prefix) != shown:
            shown = (asked.system, asked.prefix)
            if asked.system:
                messages.append(ChatMessageSystem(content=asked.system))
            messages += _turn_messages(asked.prefix)
        messages += _step_messages(step, model)
    return messages


def _turn_messages(parts: Sequence[Part]) -> list[Any]:
    from inspect_ai.model import ChatMessageAssistant, ChatMessageUser

    messages: list[Any] = []
    for role, group in turns(parts):
        content = _content(group)
        if role == "assistant":  # an answer the prompt shows (a demonstration's), not generated
            messages.append(ChatMessageAssistant(content=content, source="input"))
        else:
            messages.append(ChatMessageUser(content=content))
    return messages


def _content(parts: Sequence[Part]) -> list[Any]:
    from inspect_ai.model import ContentImage, ContentText

    content: list[Any] = []
    for part in parts:
        if isinstance(part, TextPart):
            content.append(ContentText(text=part.text))
        elif isinstance(part, ImagePart):
            content.append(ContentImage(image=_png_data_uri(part.png)))
    return content


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _step_messages(step: ViewedStep, model: str) -> list[Any]:
    """A step's prompt end as a user message (its observation and what followed it, or the
    prompt after the prefix where the observation does not end it), and its completion."""
    from inspect_ai.model import ChatMessageAssistant, ChatMessageUser

    asked, stored = step.asked, step.stored
    if asked is None:
        problems = "; ".join(step.problems()) or "it was not replayed"
        shown = [ChatMessageUser(content=f"[this step's prompt could not be rebuilt: {problems}]")]
    elif asked.rest is not None:
        shown = _turn_messages(asked.rest)
    else:
        observation = asked.observation
        parts: list[Part] = []
        if observation is not None:
            parts.append(TextPart(observation.text) if observation.text is not None
                         else ImagePart(observation.image_png or b""))  # fmt: skip
        if asked.after_observation:
            parts.append(TextPart(asked.after_observation))
        shown = [ChatMessageUser(content=_content(parts))]
    answer = ChatMessageAssistant(
        content=stored.completion, source="generate", model=model, metadata=step_fields(step)
    )
    return [*shown, answer]
