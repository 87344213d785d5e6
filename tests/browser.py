"""Headless Chromium for the browser tests and bench/explorer_latency.py: Playwright driving Debian's chromium.

No browser is downloaded: Playwright launches the system's ``chromium``
(Debian's package, which ``.ci/run`` installs) through ``executable_path``,
with a fresh profile in a temporary folder and the flags a root user without
a display needs. Background networking, component updates and sync are off,
so the only requests the browser makes are the pages'.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """Debian's chromium (``AMORTIZED_CHROMIUM`` overrides), or None where it is not installed."""
    for candidate in (os.environ.get("AMORTIZED_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def why_no_browser() -> str | None:
    """None when the browser tests can run; otherwise the reason, for pytest's skip."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install -e '.[test]')"
    if chromium_path() is None:
        return "Debian's chromium is not installed (apt-get install chromium; .ci/run tries it)"
    return None


@contextmanager
def chromium(viewport: tuple[int, int] = (1400, 1000)) -> Iterator:
    """A browser context on a fresh user-data-dir, closed and removed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=chromium_path(),
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        try:
            yield context
        finally:
            context.close()


@contextmanager
def live_page(viewport: tuple[int, int] = (1400, 1000)) -> Iterator:
    """A live server of the committed artifacts (:mod:`tests.launch`) and a watched page of headless Chromium.

    Yields ``(page, watch, url)``; the server stops when the block ends. For the scripts that measure or
    photograph the pages (bench/explorer_latency.py, docs/screenshots.py).
    """
    from tests.launch import ROOT, start_server, stop_server

    env = {"AMORTIZED_ARTIFACTS_DIR": str(ROOT / "artifacts")}
    process, url = start_server(env, "--log-level", "warning", "--no-access-log", timeout=120)
    try:
        with chromium(viewport) as context:
            page = context.new_page()
            yield page, Watch(page, url), url
    finally:
        stop_server(process)


def leaves_host(url: str, base: str) -> bool:
    """True for a request to anywhere but the server under test (data: and same-origin blob: URLs stay here)."""
    scheme = urlsplit(url).scheme
    if scheme in ("data", "about"):
        return False
    if scheme == "blob":
        url = url[len("blob:") :]
    return urlsplit(url).netloc != urlsplit(base).netloc


class Watch:
    """Console errors, uncaught exceptions, failed requests and requests leaving the host, seen by one page."""

    def __init__(self, page, base: str) -> None:
        self.errors: list[str] = []
        self.foreign: list[str] = []
        page.on(
            "console",
            lambda message: self.errors.append(f"console: {message.text}") if message.type == "error" else None,
        )
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("requestfailed", lambda request: self.errors.append(f"failed: {request.url} {request.failure}"))
        page.on("request", lambda request: self.foreign.append(request.url) if leaves_host(request.url, base) else None)

    def check(self) -> None:
        assert not self.errors, self.errors
        assert not self.foreign, f"requests left the host: {self.foreign}"
