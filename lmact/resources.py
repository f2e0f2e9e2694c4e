"""Where the shipped data (task specs, prompt templates) lives.

In a wheel, `tasks/` and `prompts/` are installed inside the package as `lmact/_data/`;
in a checkout (or an editable install) they are the top-level folders beside `lmact/`.
"""

import functools
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from lmact.errors import LmactError

Model = TypeVar("Model", bound=BaseModel)

_PACKAGE_DIR = Path(__file__).resolve().parent


@functools.cache  # an installation does not move while it runs; reports ask thousands of times
def data_dir(name: str) -> Path:
    """The folder of shipped data called `name` ("tasks", "prompts" or "published")."""
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"lmact's {name}/ folder is missing from the installation")


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file's top table; a file that cannot be read or parsed is a one-line error
    naming `what` it is and its path."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise LmactError(f"{what} {path}: cannot be read ({reason})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise LmactError(f"{what} {path}: {error}") from None


def validated(model: type[Model], data: Mapping[str, Any], path: Path, what: str) -> Model:
    """`data` as a `model`; the first problem is a one-line error naming the file."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        raise LmactError(f"{what} {path}: {where}: {first['msg']}") from None
