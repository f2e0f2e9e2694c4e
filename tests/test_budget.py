"""`--max-cost` and `--max-time`: no call is sent that could take the spend past the cap;
the run stops in one line saying what it spent and what is left, exit status 3; a rerun
with a higher cap finishes with no call sent again and the numbers of an uncapped run."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from loopback import RecordedRequest, Reply, chat_completion, loopback

from lmact.budget import (
    EXIT_CAPPED,
    PROMPT_ROOM,
    PROMPT_SLACK_TOKENS,
    Budget,
    BudgetReached,
)
from lmact.models.base import ModelClient, ModelOptions, ModelRequest, TextPart
from lmact.models.caller import ModelCaller
from lmact.models.registry import resolve_model

CELLS = [f"{row}{column}" for row in "abc" for column in "123"]
# What the server says every call used, and the prices: a call costs $42 (40 + 2 tokens at
# a dollar each), so that the spend is easy to count from the requests.
PROMPT_TOKENS, COMPLETION_TOKENS, PRICE = 40, 2, 1_000_000
CALL_COST = (PROMPT_TOKENS + COMPLETION_TOKENS) * PRICE / 1_000_000


def moves(request: RecordedRequest) -> Reply:
    cell = CELLS[hashlib.sha256(request.body).digest()[0] % len(CELLS)]
    return Reply(body=chat_completion(cell, PROMPT_TOKENS, COMPLETION_TOKENS))


def lmact(*args: str, store: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "LMACT"))}
    env["LMACT_CACHE_DIR"] = str(store.parent / "cache")
    command = [
        sys.executable, "-m", "lmact.cli", "run", "--task", "tic_tac_toe", "--demos", "0",
        "--episodes", "6", "--model", "openai-compatible/m", "--base-url", f"{url}/v1",
        "--input-price", str(PRICE), "--output-price", str(PRICE), "--max-connections", "2",
        "--store", str(store), *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_a_capped_run_stops_within_its_cap_and_resumes_with_a_higher_one(tmp_path: Path) -> None:
    cap = 10 * CALL_COST
    with loopback(moves) as server:
        capped = lmact("--max-cost", str(cap), store=tmp_path / "capped.sqlite", url=server.url)
        spent_capped = len(server.requests) * CALL_COST
        resumed = lmact("--max-cost", "1e9", "--json", store=tmp_path / "capped.sqlite",
                        url=server.url)  # fmt: skip
        sent = [request.body for request in server.requests]
        alone = lmact("--json", store=tmp_path / "uncapped.sqlite", url=server.url)
        uncapped = [request.body for request in server.requests[len(sent) :]]
    assert capped.returncode == EXIT_CAPPED, capped.stderr
    (line,) = capped.stderr.splitlines()
    assert "stopped at --max-cost" in line and "left undone" in line and "Traceback" not in line
    assert 0 < spent_capped <= cap  # never above the cap
    assert resumed.returncode == 0 == alone.returncode, resumed.stderr + alone.stderr
    assert len(sent) == len(set(sent))  # no call sent twice
    assert sorted(sent) == sorted(uncapped)  # the calls an uncapped run sends
    counters = ("calls_made", "calls_cached", "retries", "cached_tokens", "run_id")
    first, second = json.loads(resumed.stdout), json.loads(alone.stdout)
    assert {k: v for k, v in first.items() if k not in counters} == {
        k: v for k, v in second.items() if k not in counters
    }


def test_a_budget_reserves_the_most_a_call_may_cost_and_refuses_past_its_caps() -> None:
    budget = Budget(max_cost=10.0)
    budget.reserve(4.0)
    budget.reserve(4.0)  # two in flight: 8 of 10 held
    with pytest.raises(BudgetReached, match=r"--max-cost \$10"):
        budget.reserve(4.0)
    budget.settle(4.0, 3.0)  # one answered, for less than its most
    budget.reserve(3.0)  # 3 spent + 4 in flight + 3 <= 10
    assert budget.spent == 3.0 and budget.in_flight == 7.0
    with pytest.raises(BudgetReached, match="prices"):
        Budget(max_cost=1.0).reserve(None)
    Budget().reserve(None)  # no cap: anything goes
    timed = Budget(max_time_s=0.0)
    with pytest.raises(BudgetReached, match="--max-time"):
        timed.reserve(None)


def test_the_dry_run_holds_the_cap_against_its_estimate_in_text_and_json(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite"
    url = "http://127.0.0.1:9"  # a dry run calls no model
    estimate = json.loads(lmact("--dry-run", "--json", store=store, url=url).stdout)
    assert estimate["cost_usd"] > 0 and "max_cost_usd" not in estimate
    for cap, fits in ((estimate["cost_usd"] * 2, True), (estimate["cost_usd"] / 2, False)):
        given = lmact("--dry-run", "--json", "--max-cost", repr(cap), store=store, url=url)
        assert json.loads(given.stdout) == estimate | {
            "max_cost_usd": cap, "estimate_within_cap": fits,
        }  # fmt: skip
        table = lmact("--dry-run", "--max-cost", repr(cap), store=store, url=url)
        (line,) = [line for line in table.stdout.splitlines() if "--max-cost" in line]
        assert ("passes it" in line) is not fits


def priced(prompt_usd: float, completion_usd: float) -> ModelClient:
    """An OpenAI-compatible client at these prices a token (at no address: a call the
    budget let through would fail to connect)."""
    options = ModelOptions(base_url="http://127.0.0.1:9/v1", input_price=prompt_usd * 1e6,
                           output_price=completion_usd * 1e6)  # fmt: skip
    return resolve_model("openai-compatible/m", options)


def refused_under(cap: float, client: ModelClient, request: ModelRequest) -> None:
    """A call of `request` under `cap` is refused before anything is sent."""
    caller = ModelCaller(client, None, budget=Budget(max_cost=cap))
    with pytest.raises(BudgetReached, match="could cost up to"):
        asyncio.run(caller.call(request))
    assert caller.budget.calls == 0


def test_a_call_reserves_the_completion_room_its_client_adds_to_the_answer() -> None:
    """A constrained answer's JSON is billed as completion tokens beyond `max_tokens`: the
    budget reserves every completion token the client asks the server for, so that a cap
    between the answer's tokens and those is not passed."""
    client = priced(0.0, 1.0)  # a dollar a completion token
    request = ModelRequest(parts=(TextPart("a1 or b2?"),), max_tokens=8, choices=("a1", "b2"))
    asked = client.chat_parameters(request)["max_tokens"]
    assert asked > request.max_tokens  # the JSON's room
    refused_under(asked - 0.5, client, request)


def test_a_call_reserves_its_system_texts_prompt_tokens() -> None:
    """The system text is billed as prompt tokens as the parts are: a cap that the parts'
    prompt and the answer fit within, but not the system text's, is not passed."""
    client = priced(1.0, 0.0)  # a dollar a prompt token
    system = "You play tic-tac-toe. " * 200
    request = ModelRequest(parts=(TextPart("Your move?"),), system=system, max_tokens=8)
    parts_alone = math.ceil(client.count_tokens(request.parts) * PROMPT_ROOM)
    refused_under(parts_alone + PROMPT_SLACK_TOKENS + 100, client, request)
