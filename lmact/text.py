"""Text that users and models wrote, made safe to show: on a terminal, in a markdown table,
in a page read as plain text.

A task, model or sweep name, a completion or an error from a server is anyone's text. Raw,
an escape sequence in it recolours or clears the terminal, a carriage return overwrites the
line it is on, and a bidirectional override shows the text after it reversed. `visible`
writes each such character as an escape one can read (`\\x1b`, `\\u202e`).
"""

from __future__ import annotations

import re

__all__ = ["error_line", "visible"]

# C0 controls, DEL, C1 controls, and the bidirectional embeddings, overrides and isolates.
_UNSAFE = "\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
_PATTERNS: dict[str, re.Pattern[str]] = {}


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str, keep: str = "") -> str:
    """`text` with every control character and bidirectional override written as an escape
    (`\\x1b`, `\\u202e`), but those in `keep` (say "\\n" for text of several lines)."""
    pattern = _PATTERNS.get(keep)
    if pattern is None:
        kept = "".join(re.escape(character) for character in keep)
        pattern = re.compile(f"(?![{kept}])[{_UNSAFE}]" if kept else f"[{_UNSAFE}]")
        _PATTERNS[keep] = pattern
    return pattern.sub(_escape, text)


def error_line(error: BaseException, named: bool = True) -> str:
    """An error in one line, safe to show: the first line of its text, after its type's
    name where `named` (a library's error, whose text alone may say little), or the name
    alone if it has no text."""
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    name = type(error).__name__
    if not first:
        return name
    return visible(f"{name}: {first}" if named else first)
