"""What every provider shares: each module imports without its SDK (a user who never calls
a provider need not install it), and a missing SDK is a one-line error naming the extra,
raised by the check that runs before a run's first call."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lmact.models.base import ModelOptions, ModelResponse
from lmact.models.redaction import REDACTED
from lmact.models.registry import resolve_model
from lmact.models.remote import MAX_DETAIL_CHARS, RemoteModel


@pytest.mark.parametrize(
    ("model", "blocked", "message"),
    [
        ("openai/gpt-4o", "openai", "OpenAI models need the openai package: "
         "pip install 'lmact[openai]'"),
        ("openai-compatible/m", "openai", "OpenAI models need the openai package: "
         "pip install 'lmact[openai]'"),
        ("anthropic/claude-haiku-4-5", "anthropic", "Anthropic models need the anthropic "
         "package: pip install 'lmact[anthropic]'"),
        ("google/gemini-2.5-flash", "google.genai", "Google Gemini models need the "
         "google-genai package: pip install 'lmact[google]'"),
    ],
)  # fmt: skip
def test_without_its_sdk_a_provider_names_its_extra(model: str, blocked: str, message: str) -> None:
    script = (
        "import sys\n"
        f"sys.modules[{blocked!r}] = None\n"
        "from lmact.errors import LmactError\n"
        "from lmact.models.base import ModelOptions\n"
        "from lmact.models.registry import resolve_model\n"
        "client = resolve_model(sys.argv[1], ModelOptions(base_url='http://127.0.0.1:9/v1'))\n"
        "try:\n"
        "    client.check_ready()\n"
        "except LmactError as error:\n"
        "    print(error)\n"
    )
    env_keys = ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"]

    env = {**os.environ, **dict.fromkeys(env_keys, "k")}
    done = subprocess.run(
        [sys.executable, "-c", script, model],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == message


@pytest.mark.parametrize(
    ("model", "variable"),
    [
        ("openai/gpt-4o", "OPENAI_API_KEY"),
        ("anthropic/claude-haiku-4-5", "ANTHROPIC_API_KEY"),
        ("google/gemini-2.5-flash", "GEMINI_API_KEY"),
    ],
)
def test_error_details_lose_the_key_before_they_are_cut(
    model: str, variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-SECRET-0123456789abcdef0123456789"
    monkeypatch.setenv(variable, secret)
    client = resolve_model(model, ModelOptions())
    assert isinstance(client, RemoteModel)
    page = "<html>\n" + "x" * 280 + f" Bearer {secret}\n</html>"  # the key straddles the cut
    detail = client.detail(page)
    assert secret[:8] not in detail and "\n" not in detail
    # The cut falls inside the marker, which is kept whole rather than left as "[redac".
    assert detail.endswith(f"Bearer {REDACTED} …")
    assert MAX_DETAIL_CHARS < len(detail) <= MAX_DETAIL_CHARS + len(REDACTED) + 2
    error = client.status_error(502, page)
    assert secret[:8] not in str(error) and "HTTP 502" in str(error)


def test_what_the_user_gives_replaces_the_catalog() -> None:
    listed = resolve_model("anthropic/claude-haiku-4-5", ModelOptions())
    given = resolve_model(
        "anthropic/claude-haiku-4-5",
        ModelOptions(context_window=8_000, max_images=5, input_price=2.0, output_price=4.0),
    )
    assert (listed.context_window, listed.max_images) == (200_000, 100)
    assert (given.context_window, given.max_images) == (8_000, 5)
    response = ModelResponse("a1", prompt_tokens=1_000_000, completion_tokens=1_000_000)
    assert listed.cost_usd(response) == pytest.approx(1.0 + 5.0)
    assert given.cost_usd(response) == pytest.approx(2.0 + 4.0)
