"""Screenshots of the pages for the README, taken in headless Chromium against a live server.

.venv/bin/python docs/screenshots.py    # writes docs/landing.png, docs/swagger.png, docs/explorer.png
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.launch, tests.browser
from tests.browser import live_page, why_no_browser  # noqa: E402
from tests.launch import ROOT  # noqa: E402

OUT = ROOT / "docs"


def main() -> int:
    reason = why_no_browser()
    if reason:
        print(f"cannot take screenshots: {reason}", file=sys.stderr)
        return 1
    with live_page(viewport=(1360, 900)) as (page, watch, url):
        page.goto(f"{url}/")
        page.wait_for_load_state("networkidle")
        shoot(page, OUT / "landing.png", full_page=True)

        page.goto(f"{url}/docs")
        operation = page.locator("#operations-posterior-posterior_v1_models__model__posterior_post")
        operation.locator(".opblock-summary").click()
        operation.locator(".examples-select select").select_option(
            label="gmm: both losses at y = 0 (the seed's contrast)"
        )
        page.wait_for_load_state("networkidle")
        operation.scroll_into_view_if_needed()
        page.evaluate("() => window.scrollBy(0, -80)")
        shoot(page, OUT / "swagger.png", full_page=False)

        page.goto(f"{url}/explore?model=gmm&objective=both&y=0&n=1000&seed=7")
        page.wait_for_function("() => window.explorer && window.explorer.ready && window.explorer.sweep !== null")
        page.wait_for_function("() => document.body.dataset.drawnY === '0'")
        page.wait_for_timeout(300)
        shoot(page, OUT / "explorer.png", full_page=True)
        watch.check()
    return 0


def shoot(page, path: Path, full_page: bool) -> None:
    page.screenshot(path=str(path), full_page=full_page)
    print(path.relative_to(ROOT))


if __name__ == "__main__":
    raise SystemExit(main())
