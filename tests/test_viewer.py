"""The episode viewer (`lmact view`): each stored step rebuilt offline and checked against
its prompt hash, the page self-contained and inert to what a model writes, opened in
headless Chromium; run id prefixes and the errors of the command."""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from browser import opened, pixel_colours
from helpers import CONVERSATION_PARTS, StubModel
from PIL import Image

from lmact.cli import main
from lmact.demos import DemoStore
from lmact.errors import LmactError
from lmact.models.base import ModelRequest, ModelResponse, TextPart
from lmact.records import UnitKey
from lmact.regimes.base import RegimeConfig
from lmact.regimes.icrl import make_icrl_config
from lmact.regimes.icrl_facts import shown_context
from lmact.regimes.imitation import make_config
from lmact.report.tables import resolve_run
from lmact.report.viewer import (
    CONTENT_SECURITY_POLICY,
    KIND_COLOURS,
    make_server,
    render_viewer,
)
from lmact.report.viewer_page import _Prefixes
from lmact.runner import Runner
from lmact.store import RunStore
from lmact.tasks import get_task

SCRIPT = "<script>alert(1)</script>"
TEXTAREA = '</textarea><img src="x"><i>injected</i>'
SHOWN = "section.episode:not([hidden])"  # the episode on screen


class StepAnswers(StubModel):
    """Answers step t of an episode with `answers[t]` (cycling), t being the number of
    actions the prompt's current episode shows; `by_length`: by the prompt's length."""

    accepts_images = True

    def __init__(self, answers: Sequence[str], by_length: bool = False) -> None:
        super().__init__("test/step-answers")
        self.answers = list(answers)
        self.by_length = by_length

    async def complete(self, request: ModelRequest) -> ModelResponse:
        tail = request.parts if self.by_length else request.parts[request.stable_prefix_parts :]
        text = "".join(part.text for part in tail if isinstance(part, TextPart))
        index = len(text) if self.by_length else text.count("\nAction: ")
        return ModelResponse(
            text=self.answers[index % len(self.answers)],
            prompt_tokens=len(text) // 4,
            completion_tokens=3,
            latency_s=0.25,
        )


def played(
    store: RunStore, config: RegimeConfig, episodes: int, client: StubModel | None = None
) -> None:
    """Play `config` (with `client`, if its model is one) into `store`, demonstrations in
    the default cache (the one `render_viewer` and `lmact view` read)."""
    runner = Runner(store, DemoStore(), progress=False)
    if client is not None:
        runner.policies.register(client)
    try:
        runner.run(config, episodes)
    finally:
        runner.close()


def first_shown_step(page: Any) -> Any:  # a playwright Page and Locator
    return page.locator(f"{SHOWN} li.step").first


def expanded(details: Any) -> Any:
    """A `details.prefix` locator opened, once the page's script has filled it in."""
    details.locator("summary").click()
    filled = details.and_(details.page.locator("details[data-filled]"))
    filled.wait_for()
    return filled


def test_a_text_episode_shows_what_the_model_saw_and_the_replaced_answers(
    tmp_path: Path,
) -> None:
    config = make_config("tic_tac_toe", model="test/step-answers", demos=2)
    with RunStore(tmp_path / "runs.sqlite") as store:
        played(store, config, 4, StepAnswers([SCRIPT, "", "a1", TEXTAREA, "b2", "c3"]))
        steps = store.steps(config.run_id)
        html = render_viewer(store, config.run_id)
    kinds = {step.kind.value for step in steps}
    assert {"invalid", "empty", "illegal"} <= kinds  # answers that the fallback replaced
    assert SCRIPT not in html and TEXTAREA not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count('class="check ok"') == len(steps)  # every prompt rebuilt and verified
    path = tmp_path / "view.html"
    path.write_text(html)

    expected = get_task("tic_tac_toe").make_environment()
    expected.reset(0)
    with opened(path) as browser:
        assert browser.console_errors == [] and browser.outside_requests == []
        page = browser.page
        first = first_shown_step(page)
        assert first.locator("pre.obs").text_content() == expected.render("txt").text
        assert first.locator(".step-no").text_content() == "step 0"
        # The first step's kind badge is drawn in its kind's colour.
        badge = first.locator(".kind").bounding_box()
        box = (int(badge["x"]) + 2, int(badge["y"]) + 2, int(badge["x"] + badge["width"]) - 2,
               int(badge["y"] + badge["height"]) - 2)  # fmt: skip
        assert KIND_COLOURS[steps[0].kind] in pixel_colours(page.screenshot(), box)
        # Every answer that was not executed is marked, and no other.
        replaced = page.locator(".replaced-mark").count()
        assert replaced == sum(step.kind != "valid" for step in steps) > 0
        # Model text is text: nothing it holds became an element.
        assert page.locator("main i, main img[src='x'], main script").count() == 0
        completions = page.locator("pre.completion").all_text_contents()
        assert SCRIPT in completions and TEXTAREA in completions
        # The demonstrations open on demand.
        assert "Action:" in expanded(page.locator(f"{SHOWN} details.prefix")).inner_text()


def png_colours(png: bytes) -> set[tuple[int, int, int]]:
    with Image.open(io.BytesIO(png)) as image:
        return {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 20) or []}


def test_lmact_view_on_an_image_episode_with_replaced_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(
        "grid_world", observation="png", model="test/step-answers", demos=1, max_steps=6
    )
    with RunStore(tmp_path / "runs.sqlite") as store:
        played(store, config, 2, StepAnswers(["up", "jump", "", "left"]))
        replaced = sum(step.kind != "valid" for step in store.steps(config.run_id, UnitKey(0, 1)))
    out = tmp_path / "page.html"
    store, cache = str(tmp_path / "runs.sqlite"), str(tmp_path / "cache")
    code = main(["view", config.run_id[:6], "--episode", "1", "--out", str(out),
                 "--store", store, "--cache-dir", cache])  # fmt: skip
    assert code == 0 and capsys.readouterr().out == f"{out}\n"

    expected = get_task("grid_world").make_environment()
    expected.reset(1)
    observation = expected.render("png").image_png
    assert observation is not None
    with opened(out) as browser:
        assert browser.console_errors == [] and browser.outside_requests == []
        page = browser.page
        assert page.locator(SHOWN).get_attribute("id") == "episode-1"
        image = first_shown_step(page).locator("img.obs-image")
        source = image.get_attribute("src") or ""
        assert base64.b64decode(source.removeprefix("data:image/png;base64,")) == observation
        assert (
            image.evaluate("img => img.naturalWidth") == Image.open(io.BytesIO(observation)).width
        )
        box = image.bounding_box()
        shot = pixel_colours(
            page.screenshot(),
            (
                int(box["x"]),
                int(box["y"]),
                int(box["x"] + box["width"]),
                int(box["y"] + box["height"]),
            ),
        )
        drawn = png_colours(observation)
        assert len(shot & drawn) >= len(drawn) // 2  # the board itself is on the screen
        shown = page.locator(f"{SHOWN} .replaced-mark").count()
        assert shown == replaced > 0
        # The demonstration's images are filled in when it is opened.
        images = expanded(page.locator(f"{SHOWN} details.prefix")).locator("img")
        assert images.count() > 0
        assert images.first.evaluate("img => img.decode().then(() => img.naturalWidth)") > 0


def test_an_icrl_step_shows_the_context_it_was_given(tmp_path: Path) -> None:
    config = make_icrl_config("bandit_easy", model="test/step-answers", replicates=2)
    client = StepAnswers(["violet", "maroon", "gold", "press it", "grey", "pink"], by_length=True)
    chosen = UnitKey(1, 4)  # replicate 1, episode 4
    with RunStore(tmp_path / "runs.sqlite") as store:
        played(store, config, 5, client)
        (step,) = store.steps(config.run_id, chosen)
        earlier = [store.steps(config.run_id, UnitKey(1, e))[0].action for e in range(4)]
        page = render_viewer(store, config.run_id[:8], chosen)
    assert shown_context(step) == (0, 1, 2, 3)
    path = tmp_path / "icrl.html"
    path.write_text(page)
    with opened(path) as browser:
        assert browser.console_errors == [] and browser.outside_requests == []
        section = browser.page.locator(SHOWN)
        assert section.locator("h2").text_content() == "replicate 1 · episode 4"
        assert section.locator(".check.ok").count() == 1
        context = section.locator("details.prefix")
        assert "earlier episodes 0, 1, 2, 3" in context.locator("summary").text_content()
        text = expanded(context).inner_text()
        assert [line.removeprefix("Action: ") for line in text.splitlines()
                if line.startswith("Action: ")] == earlier  # fmt: skip
        # Another episode is one click away.
        browser.page.locator("nav a[data-episode='c1-0']").click()
        other = browser.page.locator("section#episode-c1-0:not([hidden])")
        other.wait_for()
        assert other.locator("h2").text_content() == "replicate 1 · episode 0"
        assert browser.page.locator(SHOWN).count() == 1


def test_a_scenario_step_shows_its_system_message_and_prompt_and_its_drawn_arm(
    tmp_path: Path,
) -> None:
    """A scenario prompt's history and question follow no observation: the page shows the
    prompt as sent, and a distribution's draw replays to the arm the run pressed."""
    config = make_icrl_config("bandit_hard", model="test/step-answers", scenario="buttons",
                              returns="distribution", replicates=1)  # fmt: skip
    client = StepAnswers(["<Answer>blue: 0.5, red: 0.5</Answer>"])
    with RunStore(tmp_path / "runs.sqlite") as store:
        played(store, config, 6, client)
        steps = [store.steps(config.run_id, UnitKey(0, e))[0] for e in range(6)]
        page = render_viewer(store, config.run_id[:8], UnitKey(0, 5))
    assert {step.action for step in steps} == {"blue", "red"}  # drawn, not always one
    path = tmp_path / "scenario.html"
    path.write_text(page)
    with opened(path) as browser:
        assert browser.console_errors == []
        step = first_shown_step(browser.page)
        assert step.locator(".check.ok").count() == 1 and step.locator(".note").count() == 0
        assert step.locator("dd.executed").inner_text().strip() == steps[5].action
        system, rest = step.locator("details.after").all()
        system.locator("summary").click()
        assert "You are in a room with 5 buttons" in system.inner_text()
        rest.locator("summary").click()
        presses = [f"Press {e + 1}: {steps[e].action} button" for e in range(5)]
        assert all(press in rest.inner_text() for press in presses)
        assert "press 6 of 100" in rest.inner_text()


def test_a_conversation_s_turns_are_shown_as_labelled_separators() -> None:
    prefixes = _Prefixes()
    parts = (*CONVERSATION_PARTS[:2], TextPart(SCRIPT), *CONVERSATION_PARTS[3:])
    prefixes.ref(parts)
    html = prefixes.html()
    assert (
        '<pre class="prompt">in 1\n</pre><div class="turn">assistant</div>'
        '<pre class="prompt">&lt;script&gt;alert(1)&lt;/script&gt;</pre>'
        '<div class="turn">user</div><pre class="prompt">Right.\n</pre>'
    ) in html
    assert SCRIPT not in html
    # The same texts without turns are another prefix, shown without separators.
    assert prefixes.ref([p for p in parts if isinstance(p, TextPart)]) == 1
    assert prefixes.html().count('class="turn"') == 2


def test_a_run_id_prefix_or_none_names_a_run(tmp_path: Path) -> None:
    config = make_config("tic_tac_toe", model="random", demos=1)
    with RunStore(tmp_path / "runs.sqlite") as store:
        with pytest.raises(LmactError, match="holds no run yet"):
            resolve_run(store, None)
        runner = Runner(store, DemoStore(), progress=False)
        runner.evaluate(config, 2)  # stores the random and expert baselines after it
        runner.close()
        assert len(store.runs()) == 3
        assert resolve_run(store, None).run_id == config.run_id  # not a baseline
        assert resolve_run(store, config.run_id).run_id == config.run_id
        assert resolve_run(store, config.run_id[:5].upper()).run_id == config.run_id
        for run_id in ("abc0000000000000", "abc1000000000000"):
            store.save_run(run_id, {"regime": "from-the-future"})
        with pytest.raises(LmactError, match=r"'abc' is ambiguous: 2 runs .* give more"):
            resolve_run(store, "abc")
        with pytest.raises(LmactError, match=r"no run id in .* starts with 'zz'"):
            resolve_run(store, "zz")
        assert resolve_run(store, "abc1").run_id == "abc1000000000000"
        # A configuration this lmact cannot read still shows, with the reason.
        page = render_viewer(store, "abc1")
        assert "not one this lmact reads" in page and "no finished episode yet" in page


def test_what_cannot_be_rebuilt_is_said_not_fatal(tmp_path: Path) -> None:
    config = make_config("tic_tac_toe", model="test/step-answers", demos=1)
    with RunStore(tmp_path / "runs.sqlite") as store:
        played(store, config, 2, StepAnswers(["a1", "b2", SCRIPT]))
        steps = store.steps(config.run_id)
        store._db.execute(
            "UPDATE steps SET prompt_hash = 'f00d' WHERE run_id = ? AND episode = 1 AND step = 0",
            (config.run_id,),
        )
        page = render_viewer(store, config.run_id, 1)
        assert page.count('class="check ok"') == len(steps) - 1
        assert f"{len(steps) - 1} of {len(steps)} steps were rebuilt" in page
        assert "the rebuilt prompt differs from the one sent" in page
        # A task that is gone: nothing is rebuilt, the stored records still show.
        gone = {**config.model_dump(), "task": "no_such_task"}
        store._db.execute(
            "UPDATE runs SET config = json(?) WHERE run_id = ?",
            (json.dumps(gone), config.run_id),
        )
        page = render_viewer(store, config.run_id)
    assert "the episodes could not be rebuilt: unknown task &#x27;no_such_task&#x27;" in page
    assert page.count('class="check ok"') == 0 and page.count('class="step ') == len(steps)
    assert "&lt;script&gt;" in page and SCRIPT not in page


def test_lmact_view_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "runs.sqlite"
    assert main(["view", "--store", str(store)]) == 2
    assert (
        capsys.readouterr().err
        == f"lmact: error: no run store at {store}; start with `lmact run`\n"
    )
    with RunStore(store) as runs:
        played(runs, make_config("grid_world", model="random", demos=0, max_steps=3), 2)
    for args, message in [
        (["nope"], "no run id in"),
        (["--episode", "5"], "has no finished episode 5; its finished episodes: 0, 1"),
        (["--episode", "-1"], "--episode must be at least 0, not -1"),
        (["--out", str(tmp_path / "missing" / "x.html")], "cannot write"),
    ]:
        assert main(["view", *args, "--store", str(store)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lmact: error: ") and message in err and err.count("\n") == 1
    assert main(["view", "--out", "-", "--store", str(store)]) == 0
    assert capsys.readouterr().out.startswith("<!doctype html>")


def test_the_page_is_served_on_loopback_with_its_policy() -> None:
    server = make_server("<!doctype html><p>page</p>", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as response:
            assert response.read() == b"<!doctype html><p>page</p>"
            assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other")
    finally:
        server.shutdown()
        server.server_close()
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY


def test_a_scripted_policy_is_shown_no_prompt_and_its_page_says_so(
    runner: Runner, run_store: RunStore
) -> None:
    """A scripted policy reads the situation: its steps build no prompt and record none;
    the viewer still rebuilds the prompt a model would have been shown, and says which."""
    config = make_icrl_config("bandit_hard", model="ucb", replicates=1)
    runner.run(config, 3)
    steps = run_store.steps(config.run_id)
    assert {step.prompt_hash for step in steps} == {""}
    html = render_viewer(run_store, config.run_id)
    assert html.count("played by a scripted policy, which is shown no prompt") == len(steps)
    assert html.count("Buttons: blue, green, red, yellow, purple") >= len(steps)  # the rebuild


def test_the_viewer_finds_completions_filters_replaced_answers_and_moves_by_keys(
    tmp_path: Path,
) -> None:
    """Search, the filter to answers that were replaced, the jump to the first such step
    and the keys, in headless Chromium, on a run whose replaced steps are known."""
    config = make_config("grid_world", model="test/step-answers", demos=0, max_steps=6)
    with RunStore(tmp_path / "runs.sqlite") as store:
        played(store, config, 3, StepAnswers(["up", "jump", "", "left"]))
        steps = store.steps(config.run_id)
        page_text = render_viewer(store, config.run_id, UnitKey(0, 0))
    out = tmp_path / "page.html"
    out.write_text(page_text)
    first = [s for s in steps if s.unit == UnitKey(0, 0)]
    replaced = [s for s in first if s.kind != "valid"]
    jumps = [s for s in steps if s.completion == "jump"]
    assert replaced and jumps  # the run has what the page is asked to find
    with opened(out) as browser:
        page = browser.page
        visible = f"{SHOWN} li.step:visible"
        page.fill("#find", "jump")
        assert page.locator(visible).count() == sum(s.unit == UnitKey(0, 0) for s in jumps)
        for text in page.locator(visible).all_inner_texts():
            assert "jump" in text.lower()
        assert page.locator("#found").inner_text() == f"{len(jumps)} steps found"
        page.fill("#find", "")
        page.check("#flagged")  # only the answers that were replaced
        kinds = page.locator(visible).evaluate_all("steps => steps.map(s => s.className)")
        assert len(kinds) == len(replaced) and not any("kind-valid" in k for k in kinds)
        page.uncheck("#flagged")
        assert page.locator(visible).count() == len(first)
        page.click("#first-flagged")  # the first step whose answer was replaced
        focused = page.locator(f"{SHOWN} li.step.focused")
        assert focused.get_attribute("id") == f"e0-s{replaced[0].step}"
        page.keyboard.press("j")  # the next step
        assert page.locator(f"{SHOWN} li.step.focused").get_attribute("id") == (
            f"e0-s{replaced[0].step + 1}"
        )
        page.keyboard.press("n")  # the next episode
        page.wait_for_function("() => window.location.hash === '#episode-1'")
        assert page.locator(SHOWN).get_attribute("id") == "episode-1"
        page.keyboard.press("/")
        assert page.evaluate("() => document.activeElement.id") == "find"
        assert browser.console_errors == [] and browser.outside_requests == []
