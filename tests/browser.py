"""Open a page we wrote in Debian's headless Chromium (through Playwright) and record what a
user's browser would: console errors, uncaught exceptions, and every request that leaves
the page. A page lmact writes is self-contained, so it should make none."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@dataclass
class OpenedPage:
    page: Any  # playwright.sync_api.Page
    console_errors: list[str] = field(default_factory=list)  # the page's errors among them
    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions alone
    requests: list[str] = field(default_factory=list)
    origin: str = "file:"  # where the page came from: its requests there are its own

    @property
    def outside_requests(self) -> list[str]:
        """Requests for anything but the page itself and inline data."""
        return [url for url in self.requests if not url.startswith(("data:", "blob:", self.origin))]


@contextmanager
def opened(path: Path | str, width: int = 1280, height: int = 900) -> Iterator[OpenedPage]:
    """`path` (a file, or a URL served on a loopback port) loaded in a fresh headless
    Chromium; its console and requests recorded."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            url = path if isinstance(path, str) else path.resolve().as_uri()
            opened_page = OpenedPage(page, origin="file:" if isinstance(path, Path) else url)
            page.on(
                "console",
                lambda message: (
                    message.type == "error" and opened_page.console_errors.append(message.text)
                ),
            )
            page.on("pageerror", lambda error: opened_page.page_errors.append(str(error)))
            page.on("pageerror", lambda error: opened_page.console_errors.append(str(error)))
            page.on("request", lambda request: opened_page.requests.append(request.url))
            page.goto(url)
            page.wait_for_load_state("load")
            yield opened_page
        finally:
            browser.close()


def pixel_colours(png: bytes, box: tuple[int, int, int, int]) -> set[tuple[int, int, int]]:
    """The distinct RGB colours inside `box` (left, top, right, bottom) of a screenshot."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        region = image.convert("RGB").crop(box)
        return {colour for _, colour in region.getcolors(maxcolors=1 << 20) or []}
