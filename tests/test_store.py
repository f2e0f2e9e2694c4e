"""The run store's records: units by their structured key, a regime's facts kept as JSON
objects, the pinned facts that a resumed run must keep, and the model-call cache."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from lmact.api import results
from lmact.demos import DemoStore
from lmact.errors import LmactError
from lmact.records import (
    AnswerKind,
    EpisodeRecord,
    StepRecord,
    StopReason,
    UnitKey,
    UnitKind,
    Usage,
)
from lmact.regimes.icrl import IcrlRegime, make_icrl_config
from lmact.regimes.icrl_facts import shown_context
from lmact.runner import Runner
from lmact.store import (
    Claim,
    ClaimLostError,
    RunStore,
    StoreError,
    UnitEnd,
    open_store,
    schema,
)
from lmact.store.base import FACTS_TEXT

EVALUATION = UnitKind.EVALUATION


def a_step(unit: UnitKey, reward: float = 1.0, facts: dict | None = None) -> StepRecord:
    return StepRecord(
        0, 0, "hash", "a1", "a1", AnswerKind.VALID, "a1", reward, StopReason.STOP,
        Usage(1, 1), 0.0, False, facts=facts or {},
    ).of_unit(unit)  # fmt: skip


def an_episode(unit: UnitKey, reward: float = 1.0) -> EpisodeRecord:
    return EpisodeRecord(0, 7, reward, 1, True, 1, 0, 0, 0, Usage(1, 1)).of_unit(unit)


def play(store: RunStore, unit: UnitKey, facts: dict | None = None) -> None:
    assert store.claim_episode("r", unit, 7)[0].value == "ours"
    store.record_step("r", a_step(unit, facts=facts))
    store.finish_episode("r", an_episode(unit))


def test_units_of_one_index_in_other_chains_or_kinds_are_other_units(
    store_place: Path | str,
) -> None:
    units = [UnitKey(0, 3), UnitKey(1, 3), UnitKey(1, 3, EVALUATION), UnitKey(0, 0)]
    with open_store(store_place) as store:
        for number, unit in enumerate(units):
            play(store, unit, facts={"number": number})
        finished = store.finished_episodes("r")
        # Listed chain by chain, a chain's episodes before its evaluations.
        assert list(finished) == [UnitKey(0, 0), UnitKey(0, 3), UnitKey(1, 3), units[2]]
        assert all(record.unit == unit for unit, record in finished.items())
        for number, unit in enumerate(units):
            (step,) = store.steps("r", unit)
            assert step.unit == unit and step.facts == {"number": number}
        assert [s.unit for s in store.steps("r")] == list(finished)


def test_unit_keys_sort_chain_by_chain_episodes_before_evaluations() -> None:
    keys = [UnitKey(1, 0), UnitKey(0, 1, EVALUATION), UnitKey(0, 2), UnitKey(0, 0)]
    assert sorted(keys) == [UnitKey(0, 0), UnitKey(0, 2), UnitKey(0, 1, EVALUATION), UnitKey(1, 0)]


def test_a_regimes_facts_come_back_as_written_and_must_be_an_object(
    store_place: Path | str,
) -> None:
    facts = {"context": [0, 2], "nested": {"a": [1.5, None, "x"]}}
    with open_store(store_place) as store:
        store.save_run("r", {"regime": "x"}, {"demos": 2, "note": "ü"})
        play(store, UnitKey(0, 0), facts=facts)
        assert store.steps("r")[0].facts == facts
        assert store.run("r").facts == {"demos": 2, "note": "ü"}  # type: ignore[union-attr]
        with pytest.raises(TypeError):
            store.save_run("r", {"regime": "x"}, ["not", "an", "object"])  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            store.record_step("r", a_step(UnitKey(0, 1), facts={"when": object()}))


def test_pinned_facts_refuse_a_resume_under_others_and_free_facts_follow(
    store_place: Path | str,
) -> None:
    pinned = {"demos_hash": "demonstrations"}
    with open_store(store_place) as store:
        store.save_run("r", {}, {"demos_hash": "a", "prefix_tokens": 5}, pinned)
        store.save_run("r", {}, {"demos_hash": "b", "prefix_tokens": 5}, pinned)  # no episode yet
        play(store, UnitKey(0, 0))
        store.save_run("r", {}, {"demos_hash": "b", "prefix_tokens": 6}, pinned)
        assert store.run("r").facts == {"demos_hash": "b", "prefix_tokens": 6}  # type: ignore[union-attr]
        with pytest.raises(StoreError, match="was played with other demonstrations") as error:
            store.save_run("r", {}, {"demos_hash": "c", "prefix_tokens": 6}, pinned)
        assert "--restart" in str(error.value) and "\n" not in str(error.value)
        assert store.run("r").facts["demos_hash"] == "b"  # type: ignore[union-attr]
        store.discard_run("r")
        store.save_run("r", {}, {"demos_hash": "c"}, pinned)  # --restart: played afresh


@pytest.mark.parametrize(
    ("table", "value"),
    [("steps", "{not json"), ("steps", "[1, 2]"), ("runs", '"text"'), ("episodes", "")],
)
def test_damaged_facts_are_one_line_naming_the_store(
    tmp_path: Path, table: str, value: str
) -> None:
    path = tmp_path / "runs.sqlite"
    with RunStore(path) as store:
        store.save_run("r", {})
        play(store, UnitKey(2, 1, EVALUATION))
    with sqlite3.connect(path) as db:
        db.execute(f"UPDATE {table} SET facts = ?", (value,))
    db.close()
    with RunStore(path) as store, pytest.raises(StoreError) as error:
        store.steps("r")
        store.finished_episodes("r")
        store.runs()
    message = str(error.value)
    assert str(path) in message and "not a JSON object" in message and "\n" not in message


def test_a_damaged_icrl_context_is_one_line() -> None:
    step = a_step(UnitKey(1, 2), facts={"context": [0, "one"]})
    with pytest.raises(LmactError, match="not a list of episode indices"):
        shown_context(step)
    assert shown_context(a_step(UnitKey(0, 0))) is None  # another regime's step: none


def test_icrl_units_are_replicates_chains_and_pages_replay_them_in_play_order() -> None:
    config = make_icrl_config("classification", model="random", replicates=2, eval_every=2)
    regime = IcrlRegime()
    chains = list(regime.chains(config, 3))
    evaluation = [UnitKey(0, 0, EVALUATION), UnitKey(0, 1, EVALUATION)]
    assert chains[0] == [evaluation[0], UnitKey(0, 0), UnitKey(0, 1), evaluation[1], UnitKey(0, 2)]
    assert [u.chain for u in chains[1]] == [1] * 5
    assert [regime.is_scored(config, u) for u in chains[0]] == [False, True, True, False, True]
    assert regime.unit_label(config, chains[1][3]) == "replicate 1 · held-out evaluation 1"
    # The stored units of any length of run, in the order they were played; none guessed.
    stored = [UnitKey(1, 1), UnitKey(0, 1, EVALUATION), UnitKey(0, 0), UnitKey(1, 0)]
    stored += [evaluation[0], UnitKey(5, 0)]  # a replicate the configuration does not name
    assert regime.in_play_order(config, stored) == [
        evaluation[0], UnitKey(0, 0), UnitKey(0, 1, EVALUATION), UnitKey(1, 0), UnitKey(1, 1),
        UnitKey(5, 0),
    ]  # fmt: skip
    # A page's first units: the same order, cut (and found without going over every chain).
    full = regime.in_play_order(config, stored)
    assert [regime.in_play_order(config, stored, n) for n in (1, 3, 6, 9)] == [
        full[:1], full[:3], full, full,
    ]  # fmt: skip


def test_results_name_a_unit_by_its_chain_and_keep_the_fields_they_had(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    config = make_icrl_config("bandit_easy", model="random", replicates=2)
    with RunStore(path) as store:
        runner = Runner(store, DemoStore(tmp_path / "demos"), progress=False)
        runner.run(config, 3)
        runner.close()
    found = results(path)
    steps = [s for s in found.steps if s["run_id"] == config.run_id]
    assert [(s["chain"], s["episode"], s["unit_kind"]) for s in steps] == [
        (r, e, "episode") for r in (0, 1) for e in range(3)
    ]
    # How each step's context was drawn: the newest of the replicate's earlier episodes.
    assert [s["context"]["held"] for s in steps[:3]] == [0, 1, 2]  # as before facts
    assert steps[2]["facts"] == {"context": {"rule": "newest", "held": 2, "before": 2}}
    episodes = [e for e in found.episodes if e["run_id"] == config.run_id]
    assert {(e["chain"], e["episode"]) for e in episodes} == {
        (r, e) for r in (0, 1) for e in range(3)
    }
    assert all(e["scored"] for e in episodes)


def test_a_cache_row_damaged_into_invalid_utf8_reads_as_damaged(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    with RunStore(path) as store:
        assert store.put_call("k", "m", '{"text": "a1"}') == '{"text": "a1"}'
        assert store.put_call("k", "m", '{"text": "b2"}') == '{"text": "a1"}'  # first wins
    with sqlite3.connect(path) as db:
        db.execute("UPDATE model_calls SET response = CAST(X'7B22FF' AS TEXT) WHERE key = 'k'")
    db.close()
    with RunStore(path) as store:
        assert store.get_call("k") == ""  # not a crash: the caller asks again
        store.replace_call("k", "m", '{"text": "c3"}')
        assert store.get_call("k") == '{"text": "c3"}'


def test_a_units_end_can_claim_the_next_unit_of_its_chain_in_one_transaction(
    store_place: Path | str,
) -> None:
    first, second, third = UnitKey(0, 0), UnitKey(0, 1), UnitKey(0, 2)
    with open_store(store_place) as store, open_store(store_place) as other:
        other.owner = "another-host:1:1"  # a live claim of another process (its heartbeat)
        assert store.claim_episode("r", first, 7)[0] is Claim.OURS
        claimed = store.finish_episode("r", an_episode(first), [a_step(first)],
                                       all_steps=True, claim_next=(second, 8))  # fmt: skip
        assert claimed == (Claim.OURS, None)
        assert other.claim_episode("r", second, 8)[0] is Claim.BUSY  # held: claimed with it
        # A unit whose end is refused (its totals disagree with its steps) claims nothing.
        with pytest.raises(StoreError, match="disagree"):
            store.finish_episode("r", an_episode(second, reward=2.0), [a_step(second)],
                                 all_steps=True, claim_next=(third, 9))  # fmt: skip
        assert other.claim_episode("r", third, 9)[0] is Claim.OURS
        assert list(store.finished_episodes("r")) == [first]


def test_the_ends_of_several_units_are_written_in_one_transaction_or_none(
    store_place: Path | str,
) -> None:
    units = [UnitKey(0, index) for index in range(4)]
    ends = [UnitEnd(an_episode(unit), [a_step(unit)], True) for unit in units]
    with open_store(store_place) as store, open_store(store_place) as other:
        other.owner = "another-host:1:1"  # a live claim of another process (its heartbeat)
        assert store.claim_episode("r", units[0], 7)[0] is Claim.OURS
        assert other.claim_episode("r", units[2], 7)[0] is Claim.OURS
        # The third unit is another process's: nothing of the three is written.
        with pytest.raises(ClaimLostError):
            store.finish_units("r", ends[:3], claim_next=(units[3], 7))
        assert store.finished_episodes("r") == {} and store.steps("r") == []
        assert other.claim_episode("r", units[0], 7)[0] is Claim.BUSY  # still ours
        other.release_claims()
        # The later units are claimed with the first one's end; the next unit after them.
        assert store.finish_units("r", ends[:3], claim_next=(units[3], 7)) == (Claim.OURS, None)
        assert list(store.finished_episodes("r")) == units[:3]
        assert [step.unit for step in store.steps("r")] == units[:3]
        assert other.claim_episode("r", units[3], 7)[0] is Claim.BUSY


def test_first_step_groups_count_the_finished_units_first_steps_by_their_values(
    store_place: Path | str,
) -> None:
    with open_store(store_place) as store:
        for chain in range(3):
            play(store, UnitKey(chain, 0), facts={"held": chain % 2})
            play(store, UnitKey(chain, 1), facts={"held": 5})
        play(store, UnitKey(0, 0, EVALUATION), facts={"held": 9})  # another kind
        store.claim_episode("r", UnitKey(3, 0), 7)  # unfinished: not counted
        store.record_step("r", a_step(UnitKey(3, 0), facts={"held": 0}))
        groups = store.first_step_groups(
            "r", ("episode", FACTS_TEXT), "prompt_tokens", [UnitKind.EPISODE]
        )
    counted = sorted((e, json.loads(t)["held"], n, tokens, c) for e, t, n, tokens, c in groups)
    # Each group: its values, its steps, their prompt tokens (1 a step), its first chain.
    assert counted == [
        (0, 0, 2, 2, 0), (0, 1, 1, 1, 1), (1, 5, 3, 3, 0)
    ]  # fmt: skip


def test_a_store_on_a_network_filesystem_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared, local = tmp_path / "shared dir", tmp_path / "local"
    mounts = tmp_path / "mounts"  # the kernel's table, with a space written as \040
    escaped = str(shared).replace(" ", "\\040")
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/export {escaped} nfs4 rw 0 0\n")
    monkeypatch.setattr(schema, "MOUNTS", mounts)
    assert schema.filesystem_type(shared / "sub" / "runs.sqlite") == "nfs4"
    assert schema.filesystem_type(local) == "ext4"
    for path in (shared / "runs.sqlite", shared / "new" / "runs.sqlite"):
        with pytest.raises(StoreError, match=r"network filesystem \(nfs4\)") as refused:
            RunStore(path)
        assert "\n" not in str(refused.value) and not path.exists()
        assert "postgresql://" in str(refused.value)  # it names the store that serves
    assert not (shared / "new").exists()  # refused before a folder was made there
    with RunStore(local / "runs.sqlite") as store:  # a local disk: as ever
        play(store, UnitKey(0, 0))
    monkeypatch.setattr(schema, "MOUNTS", tmp_path / "no such table")  # not Linux
    assert schema.filesystem_type(shared) is None
