"""What a server sends is checked before it is used: a response's numbers, text and stop
reason (`check_response`, also for cached answers), the waits it asks for (Retry-After),
and the secrets that must never appear in what it echoes (`redact_secrets`)."""

from __future__ import annotations

import base64
import email.utils
import json
import math
import time
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmact.models.base import (
    MAX_ANSWER_CHARS,
    MAX_TOKENS_PER_CALL,
    STOP_REASONS,
    TOKEN_FIELDS,
    ModelResponse,
    check_response,
)
from lmact.models.redaction import (
    display_url,
    redact_secrets,
    secret_forms,
    url_secrets,
    url_without_credentials,
)
from lmact.models.remote import api_key_problem, base_url_problem, retry_after_seconds

VALID = ModelResponse(
    "a1",
    "stop",
    prompt_tokens=100,
    completion_tokens=10,
    cached_tokens=50,
    cache_write_tokens=40,
    reasoning_tokens=5,
    latency_s=0.5,
)


# --- check_response ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"prompt_tokens": 10**30}, "prompt_tokens is outside"),
        ({"prompt_tokens": MAX_TOKENS_PER_CALL + 1}, "prompt_tokens is outside"),
        ({"completion_tokens": -1}, "completion_tokens is outside"),
        ({"reasoning_tokens": -5}, "reasoning_tokens is outside"),
        ({"prompt_tokens": 12.0}, "prompt_tokens is a float"),
        ({"completion_tokens": True}, "completion_tokens is a bool"),
        ({"cached_tokens": "50"}, "cached_tokens is a str"),
        ({"cached_tokens": None}, "cached_tokens is a NoneType"),
        ({"cached_tokens": 101}, "cached_tokens is more than prompt_tokens"),
        ({"cache_write_tokens": 101}, "cache_write_tokens is more than prompt_tokens"),
        ({"reasoning_tokens": 11}, "reasoning_tokens is more than completion_tokens"),
        ({"text": "x" * (MAX_ANSWER_CHARS + 1)}, "more than 1_000_000"),
        ({"text": None}, "the text is a NoneType"),
        ({"text": b"a1"}, "the text is a bytes"),
        ({"text": "a\ud800"}, "lone surrogate"),
        ({"stop_reason": "sk-echoed-key"}, "stop reason is not a known one"),
        ({"stop_reason": None}, "stop reason is not a known one"),
        ({"latency_s": math.nan}, "latency_s is not a finite"),
        ({"latency_s": math.inf}, "latency_s is not a finite"),
        ({"latency_s": -0.1}, "latency_s is not a finite"),
        ({"latency_s": "0.5"}, "latency_s is a str"),
    ],
)
def test_an_untrustworthy_response_is_refused_with_its_reason(
    changes: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ValueError, match=reason) as raised:
        check_response(replace(VALID, **changes))
    assert "\n" not in str(raised.value)
    assert "sk-echoed-key" not in str(raised.value)  # a server's values are not quoted


def test_a_trustworthy_response_passes_unchanged() -> None:
    assert check_response(VALID) is VALID
    assert check_response(ModelResponse("")) == ModelResponse("")
    at_the_bounds = ModelResponse(
        "x" * MAX_ANSWER_CHARS,
        "unreadable",
        prompt_tokens=MAX_TOKENS_PER_CALL,
        completion_tokens=MAX_TOKENS_PER_CALL,
        cached_tokens=MAX_TOKENS_PER_CALL,
        latency_s=3,
    )
    checked = check_response(at_the_bounds)
    assert checked == replace(at_the_bounds, latency_s=3.0)
    assert isinstance(checked.latency_s, float)
    assert "unreadable" in STOP_REASONS


@pytest.mark.parametrize(
    "payload",
    [
        "garbage",
        "",
        "[1, 2]",
        "null",
        '{"stop_reason": "stop"}',  # no text
        '{"text": 5}',
        '{"text": "a1", "prompt_tokens": 1e400}',
        '{"text": "a1", "prompt_tokens": NaN}',
        '{"text": "a1", "latency_s": Infinity}',
        '{"text": "a1", "prompt_tokens": ' + "9" * 5000 + "}",  # beyond int parsing limits
        "[" * 100_000 + "]" * 100_000,  # deeper than the parser's recursion
        b'{"text": "\xff"}',  # not UTF-8
        42,  # a cache row edited to another SQLite type
        None,
    ],
)
def test_a_damaged_cache_entry_is_a_value_error(payload: Any) -> None:
    with pytest.raises(ValueError):
        ModelResponse.from_json(payload)


def test_a_cache_entry_of_an_older_release_still_loads() -> None:
    # cache_write_tokens and reasoning_tokens came later; unknown fields are ignored.
    old = {"text": "a1", "stop_reason": "stop", "prompt_tokens": 5, "completion_tokens": 1}
    loaded = ModelResponse.from_json(json.dumps({**old, "cached_tokens": 0, "future": [1]}))
    assert loaded == ModelResponse("a1", "stop", 5, 1) and loaded.from_cache


# --- the property: from_json and validation give a trustworthy response or a ValueError ----

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
FIELD_NAMES = ("text", "stop_reason", *TOKEN_FIELDS, "latency_s")
# Mostly plausible values, so that many dicts pass and the bounds are probed from both sides.
SMALL_COUNTS = st.integers(min_value=0, max_value=50)
COUNT_VALUES = st.one_of(
    SMALL_COUNTS,
    SMALL_COUNTS,
    SMALL_COUNTS,
    st.integers(min_value=-5, max_value=MAX_TOKENS_PER_CALL + 5),
    JSON_VALUES,
)
PLAUSIBLE = {
    "stop_reason": st.sampled_from(sorted(STOP_REASONS)) | st.text(max_size=10) | JSON_SCALARS,
    "latency_s": st.floats(min_value=0, max_value=1e6) | JSON_SCALARS,
    **{name: COUNT_VALUES for name in TOKEN_FIELDS},
}
PLAUSIBLE_DICTS = st.fixed_dictionaries(
    {"text": st.one_of(st.text(max_size=30), st.text(max_size=30), JSON_SCALARS)},
    optional={**PLAUSIBLE, "extra": JSON_VALUES},
)
ANY_JSON = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), JSON_VALUES)


def assert_trustworthy_or_value_error(fields: Any) -> None:
    payload = json.dumps(fields)
    try:
        response = ModelResponse.from_json(payload)
    except ValueError:
        return
    for name in TOKEN_FIELDS:
        count = getattr(response, name)
        assert type(count) is int and 0 <= count <= MAX_TOKENS_PER_CALL
    assert response.cached_tokens <= response.prompt_tokens
    assert response.cache_write_tokens <= response.prompt_tokens
    assert response.reasoning_tokens <= response.completion_tokens
    assert isinstance(response.text, str) and len(response.text) <= MAX_ANSWER_CHARS
    assert response.stop_reason in STOP_REASONS
    assert isinstance(response.latency_s, float) and math.isfinite(response.latency_s)
    assert response.latency_s >= 0


@settings(max_examples=400, deadline=None)
@given(fields=PLAUSIBLE_DICTS)
def test_a_nearly_valid_answer_loads_valid_or_is_a_value_error(fields: dict[str, Any]) -> None:
    assert_trustworthy_or_value_error(fields)


@settings(max_examples=200, deadline=None)
@given(fields=ANY_JSON | JSON_VALUES)
def test_any_json_loads_valid_or_is_a_value_error(fields: Any) -> None:
    assert_trustworthy_or_value_error(fields)


COUNTS = st.integers(min_value=0, max_value=MAX_TOKENS_PER_CALL)


@st.composite
def valid_responses(draw: st.DrawFn) -> ModelResponse:
    prompt, completion = draw(COUNTS), draw(COUNTS)
    return ModelResponse(
        text=draw(st.text(max_size=50)),
        stop_reason=draw(st.sampled_from(sorted(STOP_REASONS))),
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=draw(st.integers(0, prompt)),
        cache_write_tokens=draw(st.integers(0, prompt)),
        reasoning_tokens=draw(st.integers(0, completion)),
        latency_s=draw(st.floats(min_value=0, max_value=1e9)),
    )


@settings(max_examples=300, deadline=None)
@given(response=valid_responses())
def test_every_valid_response_round_trips_through_json(response: ModelResponse) -> None:
    assert check_response(response) == response
    again = ModelResponse.from_json(response.to_json())
    assert again == response and again.from_cache
    assert again.to_json() == response.to_json()


# --- Retry-After --------------------------------------------------------------------------


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"Retry-After": " 0 "}, 0.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "20", "retry-after": "9"}, 0.02),
        ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),  # a bad -ms falls back
        ({"retry-after-ms": "1e15"}, 1e12),  # finite: the caller caps it
        ({"Retry-After": "1e12"}, 1e12),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # in the past
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 -0000"}, 0.0),  # no zone: UTC
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "-inf"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "1e400"}, None),
        ({"Retry-After": "-3"}, None),
        ({"Retry-After": ""}, None),
        ({"retry-after-ms": "inf"}, None),
        ({"Retry-After": "Mon, 01 Jan 10000 00:00:00 GMT"}, None),  # past year 9999
        ({"Retry-After": "Fri, 99 Foo 2025 99:99:99 GMT"}, None),
        ({"Retry-After": "Mon, 32 Jan 2026 00:00:00 GMT"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_retry_after_parses_what_it_can_and_ignores_the_rest(
    headers: dict[str, str] | None, expected: float | None
) -> None:
    assert retry_after_seconds(headers) == expected


def test_retry_after_as_a_date() -> None:
    wait = retry_after_seconds({"Retry-After": http_date(120)})
    assert wait is not None and 118 <= wait <= 121
    far = retry_after_seconds({"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"})
    assert far is not None and far > 1e9 and math.isfinite(far)


# --- keys and URLs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("sk-abc\rdef", "a line break at character 7"),
        ("sk-abc\ndef", "a line break at character 7"),
        ("sk abc", "a space at character 3"),
        ("sk-\tabc", "a tab at character 4"),
        ("sk-\u00a0abc", "whitespace at character 4"),
        ("sk-\x07abc", "a control character at character 4"),
        ("sk-\x7fabc", "a control character at character 4"),
        ("sk-ключ", "a non-ASCII character at character 4"),
        ("\ufeffsk-abc", "a non-ASCII character at character 1"),  # a BOM from Notepad
    ],
)
def test_a_key_that_cannot_go_into_a_header_is_described_without_showing_it(
    key: str, problem: str
) -> None:
    described = api_key_problem(key)
    assert described is not None and problem in described
    assert "abc" not in described and "sk" not in described


def test_a_good_key_has_no_problem() -> None:
    assert api_key_problem("sk-proj-AbC_123-xyz.~+/=") is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://host/v1", "scheme"),
        ("localhost:8000/v1", "scheme"),
        ("//host/v1", "scheme"),
        ("http://", "no host"),
        ("http://user:pw@/v1", "no host"),
        ("http://ho st/v1", "whitespace"),
        ("http://host/v1\n", "whitespace"),
        ("http://host:port/v1", "bad port"),
        ("http://host:99999/v1", "bad port"),
    ],
)
def test_a_bad_base_url_is_named(url: str, problem: str) -> None:
    found = base_url_problem(url)
    assert found is not None and problem in found


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000/v1", "https://api.example.com", "HTTPS://u:p@h.example/v1"]
)
def test_a_good_base_url_has_no_problem(url: str) -> None:
    assert base_url_problem(url) is None


@pytest.mark.parametrize(
    ("url", "shown", "bare"),
    [
        ("http://u:s3cret@h:1/v1", "http://[redacted]@h:1/v1", "http://h:1/v1"),
        ("https://tok3n@h/v1?x=1", "https://[redacted]@h/v1?x=1", "https://h/v1?x=1"),
        ("http://u:pa/ss@h/v1", "http://[redacted]@h/v1", "http://h/v1"),  # "/" in the password
        ("http://u:p%40ss@h/v1", "http://[redacted]@h/v1", "http://h/v1"),
        ("http://h:1/v1", "http://h:1/v1", "http://h:1/v1"),
        ("http://h/v1?to=a@b", "http://h/v1?to=a@b", "http://h/v1?to=a@b"),
        ("not a url", "not a url", "not a url"),
    ],
)
def test_urls_are_shown_and_keyed_without_their_credentials(
    url: str, shown: str, bare: str
) -> None:
    assert display_url(url) == shown
    assert url_without_credentials(url) == bare


def test_a_urls_password_and_userinfo_are_secrets() -> None:
    assert set(url_secrets("http://me:p%40ss@h/v1")) == {"p%40ss", "p@ss", "me:p%40ss", "me:p@ss"}
    assert set(url_secrets("http://tok3n@h/v1")) == {"tok3n"}
    assert url_secrets("http://h/v1") == [] and url_secrets(None) == []


# --- redaction ----------------------------------------------------------------------------

KEY = "sk-test-123\r\n"
STRIPPED = KEY.strip()


def written_forms(secret: str) -> dict[str, str]:
    """The ways an SDK, an HTTP library or a proxy has been seen to write a key."""
    raw = secret.encode()
    return {
        "as is": secret,
        "stripped": secret.strip(),
        "repr": repr(secret),
        "bytes repr": repr(b"Bearer " + raw),
        "bytes repr, stripped": repr(b"Bearer " + raw.strip()),
        "percent-encoded": quote(secret, safe=""),
        "percent-encoded, stripped": quote(secret.strip(), safe=""),
        "JSON": json.dumps({"authorization": f"Bearer {secret}"}),
        "base64": base64.b64encode(raw).decode(),
        "base64, url-safe": base64.urlsafe_b64encode(raw).decode(),
        "base64, no padding": base64.b64encode(raw).decode().rstrip("="),
        "base64 of user:key": base64.b64encode(b"user:" + raw.strip()).decode(),
        "base64 of :key": base64.urlsafe_b64encode(b":" + raw.strip()).decode(),
        "base64 of Bearer key": base64.b64encode(b"Bearer " + raw).decode(),
    }


@pytest.mark.parametrize("secret", [KEY, "sk-ant-api03-Zx_9+/==?&%é\"'\\"])
def test_no_written_form_of_a_key_survives_redaction(secret: str) -> None:
    forms = written_forms(secret)
    text = "error: " + " | ".join(f"{name}: {form}" for name, form in forms.items())
    redacted = redact_secrets(text, [secret])
    for name, form in forms.items():
        # What stays of a form is what surrounds the key (quotes, "Bearer", the user name's
        # base64); nothing of the key itself.
        assert form not in redacted, name
    for fragment in (secret.strip(), repr(secret)[1:-1], quote(secret.strip(), safe="")):
        assert fragment not in redacted
    assert redacted.count("[redacted]") >= len(forms)
    assert "error: as is: [redacted]" in redacted


def test_the_base64_of_userinfo_is_caught_at_every_alignment() -> None:
    password = "correct-horse-battery"
    for user in ("a", "ab", "abc", "abcd"):
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        assert basic not in redact_secrets(f"Authorization: Basic {basic}", [password])
        # What is left carries the user name's bits, one character that mixes them with the
        # password's first bits, one that holds its last bits, and the padding.
        before, marker, after = redact_secrets(basic, [password]).partition("[redacted]")
        assert marker and len(before) <= -(-(len(user) + 1) * 8 // 6) and len(after) <= 3


def test_a_short_secret_is_redacted_as_a_whole_but_not_by_fragments() -> None:
    forms = secret_forms("pw12")
    assert "pw12" in forms and base64.b64encode(b"pw12").decode() in forms
    assert all(len(form) >= 4 for form in forms)
    assert redact_secrets("no secret here", []) == "no secret here"
    assert redact_secrets("no secret here", [""]) == "no secret here"
