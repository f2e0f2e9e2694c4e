"""Packing is linear in the tokens packed: each demonstration is rendered and its tokens
counted once per run (also when every test episode draws its own from a pool), the prefix is
joined in linear time, and the packings are those the earlier, quadratic packing made
(digests pinned from it: a deliberate change of a template or a rendering re-pins them)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from helpers import StubModel, demonstrations

from lmact.demos import DemoStore
from lmact.models.base import (
    ImagePart,
    ModelRequest,
    ModelResponse,
    Part,
    TextPart,
    estimate_tokens,
    merge_text_parts,
)
from lmact.prompting import (
    Packing,
    PromptBuilder,
    PromptSettings,
    episode_parts,
    pack_demonstrations,
)
from lmact.regimes.imitation import make_config
from lmact.runner import Runner
from lmact.store import RunStore
from lmact.tasks import get_task

COUNTING = "test/counting"


class Counting(StubModel):
    """Answers at once; keeps the text of every count of tokens asked of it."""

    accepts_images = True

    def __init__(self) -> None:
        super().__init__(COUNTING)
        self.counted: list[str] = []

    def count_tokens(self, parts: Sequence[Part]) -> int:
        self.counted.append("".join(p.text if isinstance(p, TextPart) else "<img>" for p in parts))
        return super().count_tokens(parts)

    async def complete(self, request: ModelRequest) -> ModelResponse:
        return ModelResponse(text="b2")


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[tuple[Runner, Counting]]:
    with RunStore(tmp_path / "runs.sqlite") as store:
        runner = Runner(store, DemoStore(tmp_path / "demos"), progress=False)
        model = Counting()
        runner.policies.register(model)
        yield runner, model
        runner.close()


def rendered_text(steps: Sequence[object]) -> str:
    (part,) = merge_text_parts(episode_parts(steps))  # type: ignore[arg-type]
    assert isinstance(part, TextPart)
    return part.text


def test_a_shared_prefix_counts_each_demonstration_once(
    runner: tuple[Runner, Counting],
) -> None:
    run, model = runner
    calls = {}
    for demos in (8, 32, 64):
        model.counted.clear()
        prepared = run.plan(make_config("tic_tac_toe", model=COUNTING, demos=demos))
        assert prepared.facts.demonstrations == demos
        calls[demos] = len(model.counted)
    # One count per demonstration, and a constant: the tail, the preamble, the whole prefix.
    assert calls[32] - calls[8] == 24 and calls[64] - calls[32] == 32
    assert calls[8] <= 8 + 3
    model.counted.clear()
    budget = run.plan(make_config("tic_tac_toe", model=COUNTING, token_budget=3_000))
    # Under a budget, also the first demonstration that did not fit.
    assert len(model.counted) == budget.facts.demonstrations + 1 + 3


def test_per_episode_draws_render_and_count_each_pool_demonstration_at_most_once(
    runner: tuple[Runner, Counting], tmp_path: Path
) -> None:
    run, model = runner
    pool, demos, episodes = 12, 5, 10
    config = make_config(
        "tic_tac_toe", model=COUNTING, demos=demos, demo_draw="per-episode", demo_pool=pool
    )
    run.plan(config)  # the pool generated; what is counted below is one run's
    model.counted.clear()
    result = run.run(config, episodes)
    assert len(result.episodes) == episodes
    stored = DemoStore(tmp_path / "demos").load(get_task("tic_tac_toe"), "txt", 0, pool)
    counts = [model.counted.count(rendered_text(d.steps)) for d in stored]
    drawn = {i for e in range(episodes) for i in config.drawn_demonstrations(e)[:demos]}
    assert all(counts[i] == 1 for i in drawn)  # drawn by several episodes, counted once
    assert all(counts[i] == 0 for i in set(range(pool)) - drawn)
    # Besides those: the tail and the preamble once, and each episode's prefix once whole
    # (episode 0's is made while preparing and kept for the episode).
    assert len(model.counted) <= len(drawn) + 2 + episodes


def test_a_per_episode_packing_is_the_one_its_draw_packs_alone(
    runner: tuple[Runner, Counting],
) -> None:
    run, _ = runner
    config = make_config(
        "tic_tac_toe", model=COUNTING, demos=3, demo_draw="per-episode", demo_pool=9
    )
    plan = run.plan(config).plan
    pool = DemoStore(run.demo_store.root).load(get_task("tic_tac_toe"), "txt", 0, 9)
    builder = PromptBuilder(PromptSettings())
    for episode in (7, 0, 7, 3):  # made again once no longer kept: the same packing
        drawn = [pool[i].steps for i in config.drawn_demonstrations(episode)]
        alone = pack_demonstrations(
            builder, iter(drawn), estimate_tokens, exact=3, answer_tokens=config.max_tokens
        )
        assert plan.packing_for(episode) == alone


def seams(parts: Sequence[Part]) -> int:
    """Counts a text whole above the sum of its parts: 40 more at each seam of episodes."""
    text = "".join(p.text for p in parts if isinstance(p, TextPart))
    return estimate_tokens(parts) + 40 * text.count("\n\nObservation")


def digest(packing: Packing) -> str:
    digest = hashlib.sha256()
    for part in packing.prefix:
        if isinstance(part, TextPart):
            digest.update(b"T" + part.text.encode() + b"\0")
        else:
            digest.update(b"I" + part.sha256.encode() + b"\0")
    shown = (len(packing.demonstrations), packing.prefix_tokens, packing.reserve_tokens)
    digest.update(" ".join(f"{value}" for value in (*shown, packing.stopped_by)).encode())
    return digest.hexdigest()[:16]


# Computed with the packing before it was made linear (re-rendering and re-merging the prefix).
PACKED = [
    ("tic_tac_toe", "txt", 16, {"exact": 16}, "eba3871f14ff19d5"),
    ("tic_tac_toe", "png", 3, {"exact": 3}, "72885a31853d6481"),
    ("grid_world", "coords", 40, {"budget": 3000}, "54f58ce8048c9efb"),
    ("grid_world", "txt", 20, {"budget": 10**6, "context_window": 4000}, "02954007cb90f908"),
    ("tic_tac_toe", "png", 12, {"budget": 10**9, "max_images": 40}, "015fc5bd8b40206b"),
    ("crossword", "txt", 6, {"budget": 2500}, "b93a224a0016b5d3"),
    ("tic_tac_toe", "txt", 40, {"budget": 2000, "counter": seams}, "ee8cd745072c6af1"),
    ("grid_world", "coords", 30, {"budget": 2500, "counter": seams}, "d0e62721c860f5ab"),
]


@pytest.mark.parametrize(("task", "observation", "candidates", "options", "expected"), PACKED)
def test_packings_are_as_before(
    task: str, observation: str, candidates: int, options: dict[str, object], expected: str
) -> None:
    options = dict(options)
    counter = options.pop("counter", estimate_tokens)
    packing = pack_demonstrations(
        PromptBuilder(PromptSettings()),
        iter(demonstrations(task, observation, candidates)),
        counter,  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )
    assert digest(packing) == expected


RUNS = [
    ({"demos": 5}, "5 168abe57fc15d1c4 340", ["0eab166b3c2f3cee"] * 4),
    ({"token_budget": 2000}, "33 a490c92819184cf0 1938", ["3711ad8356ed4843"] * 4),
    ({"demos": 4, "demo_draw": "per-episode", "demo_pool": 10}, "4 81560f7c5a4242c6 284",
     ["f0f6e06600c8baa9", "cb07145aee3d4285", "27836a9202a4d12a", "54a2e7c16d87d23f"]),
    ({"token_budget": 1500, "demo_draw": "per-episode", "demo_pool": 60},
     "25 ab60952a4d5da2e3 1436",
     ["be169a9429ece64b", "091cf470d312dee0", "6b86b60496a9a8bd", "acd34cc3c055c4aa"]),
    ({"demos": 3, "demo_draw": "per-episode", "demo_pool": 10, "observation": "png"},
     "3 eaa5dde57a300df7 2178",
     ["335aebb73eef3b55", "73a060db34f6164c", "ac984f0f1f88ed37", "90194608d5089929"]),
]  # fmt: skip


@pytest.mark.parametrize(("options", "facts", "expected"), RUNS)
def test_a_run_packs_as_before(
    runner: tuple[Runner, Counting],
    options: dict[str, object],
    facts: str,
    expected: list[str],
) -> None:
    run, _ = runner
    prepared = run.plan(make_config("tic_tac_toe", model=COUNTING, **options))  # type: ignore[arg-type]
    shown = prepared.facts
    assert f"{shown.demonstrations} {shown.demonstrations_hash} {shown.prefix_tokens}" == facts
    packings = [digest(prepared.plan.packing_for(e)) for e in range(len(expected))]
    assert packings == expected


def pairwise_merge(parts: list[Part]) -> tuple[Part, ...]:
    """Text parts merged one by one into the last (the plain rule, quadratic in text)."""
    merged: list[Part] = []
    for part in parts:
        if isinstance(part, TextPart) and merged and isinstance(merged[-1], TextPart):
            merged[-1] = TextPart(merged[-1].text + part.text)
        elif not (isinstance(part, TextPart) and not part.text):
            merged.append(part)
    return tuple(merged)


def test_merged_text_parts_are_the_pairwise_merge() -> None:
    rng = random.Random(0)
    images = [ImagePart(b"\x89PNG" + bytes([k])) for k in range(3)]
    for _ in range(500):
        parts: list[Part] = [
            rng.choice([TextPart(""), TextPart("a"), TextPart("bc\n"), rng.choice(images)])
            for _ in range(rng.randrange(12))
        ]
        assert merge_text_parts(parts) == pairwise_merge(parts)


@pytest.mark.parametrize("observation", ["txt", "png"])
def test_a_prefix_is_the_merge_of_its_parts(observation: str) -> None:
    builder = PromptBuilder(PromptSettings())
    demos = demonstrations("tic_tac_toe", observation, 4)
    raw: list[Part] = [TextPart(builder.template("preamble_with_demos").substitute())]
    for steps in demos:
        raw += [*episode_parts(steps), TextPart("\n")]
    assert builder.prefix(demos) == merge_text_parts(raw)
    assert builder.rendered_prefix([merge_text_parts(episode_parts(d)) for d in demos]) == (
        merge_text_parts(raw)
    )


def test_a_stream_checks_each_stored_line_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lmact.demos

    task, store = get_task("tic_tac_toe"), DemoStore(tmp_path / "demos")
    stored = store.load(task, "txt", 0, 200)
    checked: list[int] = []
    check = lmact.demos._checked_record

    def counted(line: bytes, seed: int, image: bool) -> dict[str, object]:
        checked.append(seed)
        return check(line, seed, image)

    monkeypatch.setattr(lmact.demos, "_checked_record", counted)
    streamed = list(store.stream(task, "txt", limit=200, growing=True))
    assert streamed == stored
    assert sorted(checked) == sorted(set(checked)) and len(checked) == 200


def test_a_line_changed_between_batches_of_a_stream_is_checked_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task, store = get_task("tic_tac_toe"), DemoStore(tmp_path / "demos")
    stored = store.load(task, "txt", 0, 40)
    stream = store.stream(task, "txt", limit=40, growing=True)
    first = [next(stream) for _ in range(8)]  # the first batch
    path = store.directory(task, "txt") / "episodes.jsonl"
    lines = path.read_bytes().split(b"\n")
    lines[3] = b"{not json"
    path.write_bytes(b"\n".join(lines))
    capsys.readouterr()
    rest = list(stream)
    assert "episode 3 is corrupt" in capsys.readouterr().err  # found, and regenerated
    assert first + rest == stored
    assert store.load(task, "txt", 0, 40) == stored
