"""Secrets out of text: every form in which an API key or a URL's password can appear in an
error message or an answer, and URLs fit for display.

An SDK or a server rarely shows a key as it is: an HTTP library prints a header as a bytes
repr (`b'Bearer sk-…\\r'`), a proxy echoes it JSON-escaped, percent-encoded in a URL, or
inside the base64 of a Basic `user:password`. `redact_secrets` builds all those forms in one
place and takes each out.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import quote, quote_plus, unquote

REDACTED = "[redacted]"
# Secrets at least this long (in bytes) are also found inside any longer base64 text, at any
# alignment; a shorter one's base64 fragment is too short to tell from ordinary base64.
MIN_BASE64_FRAGMENT_SECRET = 8


def _base64_fragments(secret: bytes) -> set[str]:
    """The base64 characters that encode `secret` wherever it sits in a longer encoded text
    (e.g. `user:<key>` or `Bearer <key>`): for each of the three byte alignments, the
    characters that depend on the secret's bytes alone."""
    fragments: set[str] = set()
    if len(secret) < MIN_BASE64_FRAGMENT_SECRET:
        return fragments
    for offset in range(3):
        padded = b"\0" * offset + secret
        first = -(-offset * 8 // 6)  # the first character made of the secret's bits only
        last = len(padded) * 8 // 6  # characters after it also hold the following bytes
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            fragments.add(encode(padded).decode("ascii")[first:last])
    return fragments


@lru_cache(maxsize=64)  # the same few secrets are redacted from every message and answer
def secret_forms(secret: str) -> frozenset[str]:
    """Every way `secret` (and `secret` stripped of surrounding whitespace) may be written in
    an error text: as is, repr-escaped, as a bytes repr, JSON-escaped, percent-encoded, and
    base64 (standard and URL-safe, padded or not, whole or inside a longer encoded text)."""
    forms: set[str] = set()
    for value in {secret, secret.strip()} - {""}:
        raw = value.encode("utf-8", "surrogatepass")
        encoded = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
        forms |= {
            value,
            repr(value)[1:-1],
            ascii(value)[1:-1],
            repr(raw)[2:-1],
            json.dumps(value)[1:-1],
            json.dumps(value, ensure_ascii=False)[1:-1],
            quote(value, safe=""),
            quote(value),
            quote_plus(value),
            *encoded,
            *(text.rstrip("=") for text in encoded),
            *_base64_fragments(raw),
        }
    return frozenset(forms - {""})


def redact_secrets(text: str, secrets: Iterable[str]) -> str:
    """`text` with every form of every secret replaced by [redacted], longest form first so
    that no longer form is left half-replaced."""
    # Only the forms the text holds: a plain substring search is fast even in a long answer,
    # a regular expression of many alternatives is not.
    forms = {form for secret in secrets if secret for form in secret_forms(secret) if form in text}
    if not forms:
        return text
    pattern = "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
    return re.sub(pattern, REDACTED, text)


def _split_userinfo(url: str) -> tuple[str, str, str] | None:
    """(scheme and "://", userinfo, the rest) of a URL with credentials, else None.

    Deliberately broader than a URL parser: the userinfo runs to the last "@" before any query
    or fragment, so that a password holding "/" or "#" is still taken for one.
    """
    scheme, separator, remainder = url.partition("://")
    if not separator:
        return None
    before_query = re.split(r"[?#]", remainder, maxsplit=1)[0]
    userinfo, at, _ = before_query.rpartition("@")
    if not at:
        return None
    return scheme + separator, userinfo, remainder[len(userinfo) + 1 :]


def display_url(url: str) -> str:
    """A URL fit for a message: any credentials replaced by `[redacted]@`."""
    parts = _split_userinfo(url)
    return url if parts is None else f"{parts[0]}{REDACTED}@{parts[2]}"


def url_without_credentials(url: str) -> str:
    """A URL with its `user:password@` taken out (what a server answers does not depend on
    them, so a cache key should not either)."""
    parts = _split_userinfo(url)
    return url if parts is None else parts[0] + parts[2]


def url_secrets(url: str | None) -> list[str]:
    """The secrets a URL holds: its password (as written and percent-decoded) and the whole
    `user:password`, whose base64 is what Basic authentication sends."""
    parts = _split_userinfo(url or "")
    if parts is None:
        return []
    userinfo = parts[1]
    user, colon, password = userinfo.partition(":")
    if not colon:  # a bare user name is the credential (e.g. a token as the user)
        return [userinfo, unquote(userinfo)]
    return [password, unquote(password), userinfo, f"{unquote(user)}:{unquote(password)}"]
