"""`lmact report --format html`: one self-contained page of every regime's runs, opened in
headless Chromium: no console error, no request leaving the page, a table per task, every
plot loaded and drawn, each run linked to its viewer page; text that users and models
wrote stays text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from browser import opened, pixel_colours
from helpers import CYCLER, store_of_every_regime

from lmact.cli import main
from lmact.report.html import render_report, run_page_path
from lmact.report.pivot import pivots
from lmact.report.plots import model_colours, report_figures
from lmact.report.tables import curve_rows, grouped_by_task, report_rows
from lmact.store import RunStore

SCRIPT = "<script>window.injected = 1</script>"
IMAGE = '<img src="x" onerror="window.injected = 2">'
VIEW_EPISODES = 6  # fewer than a bandit run's 80 episodes: those pages are cut short


@pytest.fixture(scope="module")
def store_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("html-report")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMACT_CACHE_DIR", str(folder / "cache"))
        store_of_every_regime(folder)
    return folder


@pytest.fixture(scope="module")
def rows(store_folder: Path) -> list[dict[str, Any]]:
    with RunStore(store_folder / "runs.sqlite") as store:
        return report_rows(store)


@pytest.fixture(scope="module")
def report(store_folder: Path) -> Path:
    """The report written by the command, its viewer pages reading the store's demos."""
    out = store_folder / "report"
    code = main(["report", "--store", str(store_folder / "runs.sqlite"), "--format", "html",
                 "--out", str(out), "--cache-dir", str(store_folder),
                 "--view-episodes", str(VIEW_EPISODES)])  # fmt: skip
    assert code == 0
    return out / "index.html"


def _near(colours: set[tuple[int, int, int]], wanted: str, within: int = 40) -> bool:
    """Some colour of `colours` is close to `wanted` (#rrggbb): a scaled image blends."""
    target = tuple(int(wanted[i : i + 2], 16) for i in (1, 3, 5))
    return any(sum(abs(a - b) for a, b in zip(c, target, strict=True)) <= within for c in colours)


def test_the_report_loads_offline_with_a_table_per_task_and_every_plot_drawn(
    report: Path, rows: list[dict[str, Any]]
) -> None:
    groups = grouped_by_task(rows)
    figures = report_figures(rows, curve_rows(rows))
    cycler_colour = model_colours(rows)[CYCLER]
    with opened(report) as browser:
        page = browser.page
        sections = page.locator("section.task")
        assert [s.get_attribute("data-task") for s in sections.all()] == list(groups)
        for section, group in zip(sections.all(), groups.values(), strict=True):
            runs = section.locator("h4:not(.published) + .table-wrap tbody tr td:first-child")
            ids = runs.all_text_contents()
            assert ids == [row["run_id"] for row in group]
        assert page.locator("td.num").count() > 0  # numbers are marked (and right-aligned)
        shown = page.locator("figure[data-figure]")
        assert [f.get_attribute("data-figure") for f in shown.all()] == list(figures)
        for figure in shown.all():
            image = figure.locator("img")
            assert image.evaluate("image => image.complete && image.naturalWidth > 0")
            assert image.get_attribute("alt") and figure.locator("figcaption").inner_text()
            image.scroll_into_view_if_needed()
            box = image.bounding_box()
            assert box is not None and box["height"] <= 900
            region = (int(box["x"]), int(box["y"]), int(box["x"] + box["width"]),
                      int(box["y"] + box["height"]))  # fmt: skip
            colours = pixel_colours(page.screenshot(), region)
            assert len(colours) > 20  # axes, labels, lines: drawn, not blank
            if figure.get_attribute("data-figure") == "normalized-score":
                assert _near(colours, cycler_colour)  # Cycler's line is on screen
        assert browser.console_errors == [] and browser.outside_requests == []


def test_a_run_link_opens_its_viewer_page_offline(report: Path, rows: list[dict[str, Any]]) -> None:
    first = next(row for row in rows if row["task"] == "tic_tac_toe")
    with opened(report) as browser:
        page = browser.page
        page.locator(f'a[href="{run_page_path(first["run_id"])}"]').click()
        page.wait_for_load_state("load")
        assert page.url.endswith(f"/runs/{first['run_id']}.html")
        assert first["run_id"] in page.locator("header.run h1").inner_text()
        step = page.locator("section.episode:not([hidden]) li.step").first
        assert step.is_visible() and step.locator(".step-no").inner_text() == "step 0"
        assert page.locator(".check.warn").count() == 0  # every prompt rebuilt and verified
        assert browser.console_errors == [] and browser.outside_requests == []


def test_every_run_has_a_viewer_page_holding_its_first_episodes(
    report: Path, rows: list[dict[str, Any]]
) -> None:
    pages = sorted(path.name for path in (report.parent / "runs").iterdir())
    assert pages == sorted(f"{row['run_id']}.html" for row in rows)
    bandit = next(row for row in rows if row["regime"] == "icrl")
    html = (report.parent / run_page_path(bandit["run_id"])).read_text()
    assert html.count('<section class="episode"') == VIEW_EPISODES
    assert f"episodes ({VIEW_EPISODES} of {bandit['episodes']})" in html
    assert f"the first {VIEW_EPISODES} of the run's {bandit['episodes']}" in html
    # The first episodes as they are played: replicate 0's, whose contexts they hold.
    assert 'id="episode-0"' in html and 'id="episode-c1-0"' not in html


def test_view_episodes_0_writes_the_page_alone_and_prints_its_path(
    store_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(["report", "--store", str(store_folder / "runs.sqlite"), "--format", "html",
                 "--out", str(out), "--view-episodes", "0", "--task", "bandit_hard"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out == f"{out / 'index.html'}\n"
    assert sorted(path.name for path in out.iterdir()) == ["index.html"]
    html = (out / "index.html").read_text()
    assert 'href="runs/' not in html and 'data-task="bandit_hard"' in html
    assert 'data-task="tic_tac_toe"' not in html


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "html"], "--format html needs --out DIR"),
        (["--format", "html", "--out", "x", "--curves"], "--curves is for the table formats"),
        (["--view-episodes", "3"], "--view-episodes is an option of --format html"),
        (["--format", "html", "--out", "x", "--view-episodes", "-1"], "--view-episodes must"),
        (["--format", "xml"], "accepted: markdown, csv, json, html, md"),
    ],
)
def test_misused_options_are_one_line_errors(
    store_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    args: list[str], message: str,
) -> None:  # fmt: skip
    store = ["--store", str(store_folder / "runs.sqlite")]
    args = [str(tmp_path / a) if a == "x" else a for a in args]
    assert main(["report", *store, *args]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "x").exists()


def _hostile_rows() -> list[dict[str, Any]]:
    row = {"run_id": "0123456789abcdef", "task": f"task {IMAGE}", "regime": "imitation",
           "observation": "txt", "model": f"model {SCRIPT}", "demos": 2, "episodes": 3,
           "mean_return": 0.5, "cost_usd": 0.00123}  # fmt: skip
    return [row, {**row, "run_id": "fedcba9876543210", "demos": 4, "mean_return": 0.25}]


def test_user_text_renders_inert_and_comparisons_get_a_table(tmp_path: Path) -> None:
    comparisons = [
        {"baseline": "0123456789abcdef", "treatment": f"model {SCRIPT}", "difference": 0.25,
         "p_value": 0.0312},
        {"baseline": "0123456789abcdef", "treatment": "fedcba9876543210", "difference": -0.5,
         "p_value": 0.5},
    ]  # fmt: skip
    links = {"0123456789abcdef": run_page_path("0123456789abcdef")}
    html = render_report(_hostile_rows(), {}, run_pages=links, store=f"{SCRIPT}.sqlite",
                         comparisons=comparisons)  # fmt: skip
    assert SCRIPT not in html and IMAGE not in html
    assert "<script" not in html  # the report runs no script at all
    path = tmp_path / "index.html"
    path.write_text(html)
    with opened(path) as browser:
        page = browser.page
        assert page.evaluate("window.injected") is None
        assert page.locator("main img, main script").count() == 0
        cells = page.locator("section.task tbody tr td").all_text_contents()
        assert f"model {SCRIPT}" in cells and "0.500" in cells and "0.0012" in cells
        assert page.locator("section.task h3").inner_text().startswith(f"task {IMAGE}")
        linked = page.locator("section.task td a").all_text_contents()
        assert linked == ["0123456789abcdef"]  # a link where a page is given, text elsewhere
        table = page.locator("#comparisons table")
        assert table.locator("th").all_text_contents() == list(comparisons[0])
        assert table.locator("tbody tr").count() == 2
        assert table.locator("tbody td").nth(3).inner_text() == "0.031"
        assert browser.console_errors == [] and browser.outside_requests == []
    policy = html.split('http-equiv="Content-Security-Policy" content="')[1].split('"')[0]
    assert "default-src &#x27;none&#x27;" in policy and "script-src &#x27;none&#x27;" in policy
    assert 'id="comparisons"' not in render_report(_hostile_rows(), {})
    assert "No paired comparison." in render_report(_hostile_rows(), {}, comparisons=[])


def test_the_report_pairs_the_runs_that_share_test_seeds(
    report: Path, store_folder: Path, rows: list[dict[str, Any]]
) -> None:
    from lmact.report.compare import comparison_rows

    with RunStore(store_folder / "runs.sqlite") as store:
        compared, _ = comparison_rows(store, rows)
    assert compared  # the store holds runs over the same seeds
    with opened(report) as browser:
        table = browser.page.locator("#comparisons table")
        assert table.locator("tbody tr").count() == len(compared)
        assert browser.console_errors == []


def test_viewer_pages_over_the_size_limit_are_left_out_and_named(
    store_folder: Path, rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    out = tmp_path / "capped"
    code = main(["report", "--store", str(store_folder / "runs.sqlite"), "--format", "html",
                 "--out", str(out), "--cache-dir", str(store_folder), "--view-episodes", "1",
                 "--view-max-mb", "0.00001"])  # fmt: skip
    assert code == 0
    assert not (out / "runs").exists()  # every page is over 10 bytes
    with opened(out / "index.html") as browser:
        note = browser.page.locator("header .note").inner_text()
        assert all(row["run_id"] in note for row in rows) and "lmact view RUN_ID" in note
        assert browser.page.locator("td a").count() == 0  # nothing links to a missing page


def test_the_report_opens_on_each_regimes_scores_then_plots_then_runs(
    report: Path, rows: list[dict[str, Any]]
) -> None:
    expected = pivots(rows)
    with opened(report) as browser:
        page = browser.page
        order = page.eval_on_selector_all("main > section", "nodes => nodes.map(n => n.id)")
        assert order[:3] == ["scores", "plots", "runs"]
        tables = page.locator("#scores table.pivot")
        assert tables.count() == len(expected)
        for table, pivot in zip(tables.all(), expected, strict=True):
            assert table.get_attribute("data-regime") == pivot.regime
            assert table.locator("thead th").all_text_contents() == list(pivot.header)
            shown = [
                row.locator("td").all_text_contents() for row in table.locator("tbody tr").all()
            ]
            assert shown == [list(row) for row in pivot.rows]
        # The runs' tables leave out the columns no run of theirs fills.
        bandit = page.locator('section.task[data-task="bandit_hard"] thead th').all_text_contents()
        assert "regret" in bandit and "demos" not in bandit
