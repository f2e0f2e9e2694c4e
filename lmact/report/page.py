"""What every page lmact writes shares: escaping, inline images, and a document shell whose
Content-Security-Policy forbids loading anything.

A page is one file that a user opens from disk or that `lmact view --serve` sends: nothing
may load from anywhere (images are `data:` URIs), and its one style sheet and its script
(if it has one) run by their hashes, so a script that found its way into the page through
text a model wrote would not run even if escaping failed.
"""

from __future__ import annotations

import base64
import hashlib
import html

from lmact.text import visible

__all__ = ["content_security_policy", "counted", "data_uri", "document", "escape"]


def escape(value: object) -> str:
    """Any text, escaped for HTML text and attribute values alike, its control characters
    and bidirectional overrides written out (`\\x1b`, `\\u202e`): a page shows what a model
    wrote, and an override would show the text after it reversed."""
    return html.escape(visible(str(value), keep="\n\t"), quote=True)


def counted(number: int, noun: str) -> str:
    """`number` and `noun`, plural unless one: "1 run", "3 runs"."""
    return f"{number} {noun}" + ("" if number == 1 else "s")


def data_uri(png: bytes) -> str:
    """A PNG image inline, as the value of an `<img src>`."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def content_security_policy(style: str, script: str | None = None) -> str:
    """The policy of a page with this one style sheet and this one script (None: no
    script may run): no source but inline images, no form, no base URL."""
    scripts = _csp_hash(script) if script is not None else "'none'"
    return (
        f"default-src 'none'; img-src data:; style-src {_csp_hash(style)}; "
        f"script-src {scripts}; base-uri 'none'; form-action 'none'"
    )


def document(title: str, style: str, body: str, script: str | None = None) -> str:
    """A whole page: `body` (HTML, already escaped) under a head with its policy, `title`
    (text, escaped here) and `style`; `script` last, so the body is there when it runs."""
    policy = content_security_policy(style, script)
    ending = f"<script>{script}</script>" if script is not None else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{escape(policy)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{escape(title)}</title>'
        f"<style>{style}</style></head><body>{body}{ending}</body></html>"
    )
