"""Headless Chromium for the report and dashboard tests (Debian's chromium package).

``.ci/run`` installs chromium where it is missing; tests skip, saying why, only where no
browser can be found. The flags keep Chromium off the network this machine does not have.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(url: str, *extra: str, budget_ms: int = 20000) -> str:
    binary = chromium()
    assert binary is not None
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={profile}",
             f"--virtual-time-budget={budget_ms}", *extra, url],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def rendered_dom(url: str) -> str:
    """The DOM after the page's scripts ran (what a reader sees), as HTML."""
    return _run(url, "--dump-dom")


def screenshot(url: str, path: str, *, width: int = 1280, height: int = 2600) -> None:
    _run(url, f"--screenshot={path}", f"--window-size={width},{height}")


class _Counter(HTMLParser):
    """Counts elements with a given class inside each element with a given id."""

    def __init__(self, ids: tuple[str, ...], css_class: str, tag: str) -> None:
        super().__init__()
        self.ids, self.css_class, self.tag = ids, css_class, tag
        self.counts = dict.fromkeys(ids, 0)
        self.stack: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.stack.append(a.get("id") if a.get("id") in self.ids else None)
        classes = (a.get("class") or "").split()
        if tag == self.tag and self.css_class in classes:
            for owner in self.stack:
                if owner is not None:
                    self.counts[owner] += 1
        if tag in ("path", "image", "rect", "line", "br", "meta", "img", "input"):
            self.stack.pop()  # void or self-closed in the dumped DOM

    def handle_endtag(self, tag: str) -> None:
        if (
            tag not in ("path", "image", "rect", "line", "br", "meta", "img", "input")
            and self.stack
        ):
            self.stack.pop()


def count_inside(dom: str, ids: tuple[str, ...], css_class: str, tag: str) -> dict[str, int]:
    """Return, per element id, how many ``tag`` elements of ``css_class`` it holds."""
    counter = _Counter(ids, css_class, tag)
    counter.feed(dom)
    return counter.counts
