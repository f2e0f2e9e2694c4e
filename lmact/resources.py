"""Where the shipped data (task specs, prompt templates) lives.

In a wheel, `tasks/` and `prompts/` are installed inside the package as `lmact/_data/`;
in a checkout (or an editable install) they are the top-level folders beside `lmact/`.
"""

import functools
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


@functools.cache  # an installation does not move while it runs; reports ask thousands of times
def data_dir(name: str) -> Path:
    """The folder of shipped data called `name` ("tasks", "prompts" or "published")."""
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"lmact's {name}/ folder is missing from the installation")
