"""Redraw latency of the explorer after a change of y, measured in a real headless Chromium.

Starts the app (as ``make serve`` does), opens /explore on a model with both
objectives, then changes y N times, each time waiting for the page to draw
before the next change: by typing a value and pressing Enter, and by pressing
an arrow key on the focused slider. The page times each change itself, from
the input event's timestamp to the next animation frame after its charts and
table were redrawn (both queries to the API included: the posterior with
1000 samples, resampling and the cross-check, and the exact components), and
this script prints the medians.

    .venv/bin/python bench/explorer_latency.py [--model gmm] [--changes 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.launch, tests.browser
from tests.browser import live_page, why_no_browser  # noqa: E402


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"median {statistics.median(values):6.1f} ms, p90 {p90:6.1f} ms, max {max(values):6.1f} ms"


def measure(page, changes: list, act) -> list[dict]:
    """Apply each change with ``act`` and wait until the page has drawn it; the page's own timings for them."""
    before = page.evaluate("() => window.explorer.timings.length")
    for y in changes:
        act(y)
        page.wait_for_function("y => document.body.dataset.drawnY === String(y)", arg=y)
    timings = page.evaluate("() => window.explorer.timings")[before:]
    assert len(timings) == len(changes), f"{len(timings)} draws timed for {len(changes)} changes"
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gmm")
    parser.add_argument("--changes", type=int, default=50)
    args = parser.parse_args()
    reason = why_no_browser()
    if reason:
        print(f"cannot measure: {reason}", file=sys.stderr)
        return 1
    with live_page() as (page, watch, url):
        page.goto(f"{url}/explore?model={args.model}&objective=both&y=0")
        page.wait_for_function("() => window.explorer && window.explorer.ready && window.explorer.sweep !== null")
        low, high = (float(page.get_attribute("#y-slider", a)) for a in ("min", "max"))
        step = float(page.get_attribute("#y-slider", "step"))
        # warm-up: the first few answers after start-up are slower (allocations, caches)
        measure(
            page,
            [round(low + (high - low) * i / 7, 6) for i in range(1, 6)],
            lambda y: (page.fill("#y-input", str(y)), page.press("#y-input", "Enter")),
        )

        typed_values = [round(low + (high - low) * (i + 0.5) / args.changes, 6) for i in range(args.changes)]
        typed = measure(page, typed_values, lambda y: (page.fill("#y-input", str(y)), page.press("#y-input", "Enter")))

        page.fill("#y-input", "0")
        page.press("#y-input", "Enter")
        page.wait_for_function("() => document.body.dataset.drawnY === '0'")
        page.focus("#y-slider")
        slider_values = [round((i + 1) * step, 10) for i in range(args.changes)]
        slider = measure(page, slider_values, lambda y: page.keyboard.press("ArrowRight"))
        watch.check()

    print(
        f"explorer at /explore?model={args.model}&objective=both: redraw after a change of y, "
        f"{args.changes} changes each (change event to the next frame painted after the redraw; both API "
        "queries included)"
    )
    print(
        f"  typed y + Enter   : {summary([t['total'] for t in typed])}   (drawing alone: median "
        f"{statistics.median(t['draw'] for t in typed):.1f} ms)"
    )
    print(
        f"  slider, arrow key : {summary([t['total'] for t in slider])}   (drawing alone: median "
        f"{statistics.median(t['draw'] for t in slider):.1f} ms)"
    )
    load = os.getloadavg()
    print(
        f"  machine: {os.cpu_count()} cores, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 "
        "/ 15 min)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
