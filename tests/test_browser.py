"""The pages in a real headless Chromium: /, /docs, /redoc and /explore against a live server.

Each page must load with no console error, no failed request and no request
leaving the host. The explorer must query the API when y moves (slider by
keyboard, or typed) and plot exactly the API's numbers for that y, and its
URL must reproduce its state. Skipped, with the reason, only where Playwright
or Debian's chromium is missing.
"""

import json
import math

import httpx
import numpy as np
import pytest

from tests.browser import Watch, chromium, why_no_browser
from tests.conftest import ARTIFACTS
from tests.launch import start_server, stop_server

pytestmark = pytest.mark.skipif(why_no_browser() is not None, reason=f"no browser: {why_no_browser()}")

POSTERIOR = "/v1/models/{}/posterior"


@pytest.fixture(scope="module")
def server():
    process, url = start_server({"AMORTIZED_ARTIFACTS_DIR": str(ARTIFACTS)}, timeout=120)
    yield url
    stop_server(process)


@pytest.fixture(scope="module")
def browser():
    with chromium() as context:
        context.set_default_timeout(30_000)
        yield context


@pytest.fixture
def page(browser, server):
    page = browser.new_page()
    page.watch = Watch(page, server)
    yield page
    page.close()


def wait_drawn(page, y: float) -> None:
    """Until the explorer has drawn its answer for ``y`` (the body's data-drawn-y)."""
    page.wait_for_function("y => document.body.dataset.drawnY === String(y)", arg=y)


def open_explorer(page, server: str, query: str, y: float) -> None:
    """Open the explorer at ``/explore?query`` and wait until it is ready and has drawn its answer for ``y``."""
    page.goto(server + "/explore?" + query)
    page.wait_for_function("() => window.explorer && window.explorer.ready")
    wait_drawn(page, y)


def mixture_density(x: np.ndarray, parts: list[dict]) -> np.ndarray:
    out = np.zeros_like(x)
    for part in parts:
        z = (x - part["mean"]) / part["std"]
        out += part["probability"] / (part["std"] * math.sqrt(2 * math.pi)) * np.exp(-0.5 * z * z)
    return out


def test_landing_page_says_what_is_served_and_links_everything(page, server):
    page.goto(server + "/")
    page.wait_for_load_state("networkidle")
    text = page.inner_text("main")
    models = httpx.get(server + "/v1/models").json()
    for model in models:
        detail = httpx.get(server + f"/v1/models/{model['name']}").json()
        section = page.locator(f"#model-{model['name']}")
        assert model["title"] in section.inner_text()
        for objective, manifest in detail["artifacts"].items():
            row = section.locator("tbody tr", has_text=objective).first.inner_text()
            assert (
                f"{manifest['metrics']['kl_pq']:.5f}" in row and f"{manifest['metrics']['amortisation_gap']:.5f}" in row
            )
    assert "mass-covering" in text and "mode-seeking" in text
    for href in ("/docs", "/redoc", "/explore", "/metrics"):
        link = page.locator(f"header a[href='{href}']")
        assert link.count() == 1
        assert httpx.get(server + href).status_code == 200
    page.watch.check()


def test_swagger_docs_render_offline_with_the_posterior_operation_and_its_example(page, server):
    page.goto(server + "/docs")
    operation = page.locator("#operations-posterior-posterior_v1_models__model__posterior_post")
    operation.locator(".opblock-summary").click()
    examples = operation.locator(".examples-select select")
    examples.select_option(label="gmm: both losses at y = 0 (the seed's contrast)")
    example = operation.locator(".body-param__example, .model-example .highlight-code").first
    example.wait_for()
    shown = json.loads(example.inner_text())
    assert shown == {"y": 0.0, "objective": "both", "num_samples": 1000, "seed": 7}
    assert "Posterior for observation(s) y" in operation.inner_text()
    page.wait_for_load_state("networkidle")
    page.watch.check()


def test_redoc_renders_offline(page, server):
    page.goto(server + "/redoc")
    page.locator("h2", has_text="Posterior for observation(s) y").first.wait_for()  # the operation's section
    assert "gmm: both losses at y = 0" in page.inner_text("body")  # its examples
    page.wait_for_load_state("networkidle")
    page.watch.check()


def test_moving_y_queries_the_api_and_plots_its_numbers(page, server):
    open_explorer(page, server, "model=gmm_open&objective=both&y=0", 0)
    slider = page.locator("#y-slider")
    step = float(slider.get_attribute("step"))
    # the keyboard moves the slider; the page posts the new y and draws the answer
    with page.expect_request(lambda r: r.url.endswith(POSTERIOR.format("gmm_open")) and r.method == "POST") as sent:
        slider.focus()
        page.keyboard.press("ArrowRight")
    body = json.loads(sent.value.post_data)
    assert body == {"y": step, "objective": "both", "num_samples": 1000, "seed": 7, "resample": True}
    wait_drawn(page, step)
    check_plotted_values_equal_the_apis(page, server, "gmm_open", body)
    # a typed y far outside p(y): the same, and the x axis still covers q and p
    with page.expect_request(lambda r: r.url.endswith(POSTERIOR.format("gmm_open"))) as sent:
        page.fill("#y-input", "1000000")
        page.press("#y-input", "Enter")
    body = json.loads(sent.value.post_data)
    assert body["y"] == 1e6
    wait_drawn(page, 1e6)
    check_plotted_values_equal_the_apis(page, server, "gmm_open", body)
    assert page.locator("#range-note").is_visible()
    page.watch.check()


def check_plotted_values_equal_the_apis(page, server, model: str, body: dict) -> None:
    """The page's charts and table hold exactly what the API answers for this request (same seed, same numbers)."""
    page.wait_for_function("() => window.explorer.sweep !== null")
    answer = httpx.post(server + POSTERIOR.format(model), json=body).json()
    exact = httpx.get(server + f"/v1/models/{model}/exact", params={"y": body["y"]}).json()["results"][0]
    last = page.evaluate("""() => {
        const e = window.explorer, c = e.charts;
        return {answers: e.last.answers, exact: e.last.exact, bins: e.last.bins,
                density: c.density.data, histogram: c.histogram.data, branches: c.branches ? c.branches.data : null,
                sweep: c.sweepMean.data, sweepYs: e.sweep && e.sweep.ys};
    }""")
    assert last["answers"] == answer["objectives"] and last["exact"] == exact
    # density: exact p(x|y) and each q(x|y) at the plotted x
    x = np.array(last["density"][0])
    assert x.min() <= min(c["mean"] for c in exact["components"] if c["probability"] > 0.01)
    assert x.max() >= max(c["mean"] for c in exact["components"] if c["probability"] > 0.01)
    np.testing.assert_allclose(last["density"][1], mixture_density(x, exact["components"]), rtol=1e-9, atol=1e-300)
    for i, objective in enumerate(("pq", "qp")):
        branches = answer["objectives"][objective]["q"]["branches"]
        np.testing.assert_allclose(last["density"][2 + i], mixture_density(x, branches), rtol=1e-9, atol=1e-300)
        assert x.min() <= max(branches, key=lambda b: b["probability"])["mean"] <= x.max()
    # histogram of the SIR draws, as a density over the page's bins
    low, high, count = last["bins"]["low"], last["bins"]["high"], last["bins"]["count"]
    width = (high - low) / count
    hx = np.array(last["histogram"][0])
    for i, objective in enumerate(("pq", "qp")):
        draws = np.array(answer["objectives"][objective]["resampled"]["x"], dtype=float)
        inside = draws[(draws >= low) & (draws <= high)]
        counts = np.bincount(np.minimum(np.floor((inside - low) / width).astype(int), count - 1), minlength=count)
        density = counts / (len(draws) * width)
        index = np.minimum(np.floor((hx - low) / width).astype(int), count - 1)
        np.testing.assert_allclose(np.array(last["histogram"][2 + i], dtype=float), density[index], rtol=1e-12)
    # bars: exact p(branch | y), then each q(branch | y), in branch order
    heights = [[v for v in series if v is not None] for series in last["branches"][1:]]
    assert heights[0] == pytest.approx(exact["branch_probabilities"], rel=1e-12)
    for i, objective in enumerate(("pq", "qp")):
        assert heights[1 + i] == [b["probability"] for b in answer["objectives"][objective]["q"]["branches"]]
    # diagnostics table: the verdict, its reason and the numbers
    for objective in ("pq", "qp"):
        diagnostics = answer["objectives"][objective]["diagnostics"]

        def cell(field, objective=objective):
            return page.locator(f"#diagnostics td[data-objective='{objective}'][data-field='{field}']")

        assert cell("verdict").inner_text() == diagnostics["verdict"]
        assert cell("reason").inner_text() == diagnostics["reason"]
        for field, key in (("ESS", "ess"), ("Pareto k-hat", "pareto_k"), ("log p(y), estimate", "log_evidence")):
            value = cell(field).get_attribute("data-value")
            assert (None if value is None else float(value)) == diagnostics[key]
    # the sweep's q means are the API's for the sweep's y values
    sweep = httpx.post(
        server + POSTERIOR.format(model),
        json={"y": last["sweepYs"], "objective": "both", "num_samples": 1, "seed": 7, "cross_check": False},
    ).json()
    pq_branch_0 = [r["objectives"]["pq"]["q"]["branches"][0]["mean"] for r in sweep["results"]]
    assert last["sweep"][1] == pq_branch_0


def test_the_url_reproduces_the_state(page, server):
    open_explorer(page, server, "model=gmm_discrete&objective=qp&y=-2.5&n=400&seed=11", -2.5)
    assert page.locator("#model").input_value() == "gmm_discrete"
    assert not page.locator("#objective-pq").is_checked() and page.locator("#objective-qp").is_checked()
    assert page.locator("#y-input").input_value() == "-2.5" and page.locator("#num-samples").input_value() == "400"
    last = page.evaluate("() => window.explorer.last")
    assert (
        list(last["answers"]) == ["qp"]
        and last["answers"]["qp"]["seed"] == 11
        and len(last["answers"]["qp"]["samples"]["x"]) == 400
    )
    # changes go into the URL; opening that URL elsewhere shows the same answer
    page.locator("#objective-pq").check()
    page.fill("#y-input", "3.25")
    page.press("#y-input", "Enter")
    wait_drawn(page, 3.25)
    url = page.url
    assert (
        "model=gmm_discrete" in url
        and "objective=both" in url
        and "y=3.25" in url
        and "n=400" in url
        and "seed=11" in url
    )
    drawn = page.evaluate("() => window.explorer.last.answers")
    other = page.context.new_page()
    other.goto(url)
    other.wait_for_function("() => window.explorer && window.explorer.ready")
    wait_drawn(other, 3.25)
    assert other.evaluate("() => window.explorer.last.answers") == drawn
    other.close()
    page.watch.check()


@pytest.mark.parametrize(
    "query, shown, ignored",
    [
        (
            "model=nope&objective=qp&y=abc&n=0&seed=-1",
            {"model": "gmm", "y": "0", "n": "1000"},
            ["model=nope (not served here)", "y=abc (", "n=0 (", "seed=-1 ("],
        ),
        (
            "model=gmm_discrete&objective=xx&y=2e9&n=1.5&seed=3",
            {"model": "gmm_discrete", "y": "0", "n": "1000"},
            ["objective=xx (gmm_discrete has pq and qp)", "y=2e9 (", "n=1.5 ("],
        ),
        # seeds past 2^63 (the API refuses them) and past 2^53 (JavaScript would send them rounded)
        ("seed=9223372036854775808", {"model": "gmm", "y": "0", "n": "1000"}, ["seed=9223372036854775808 ("]),
        ("seed=9007199254740993&n=2e2", {"model": "gmm", "y": "0", "n": "200"}, ["seed=9007199254740993 ("]),
    ],
)
def test_values_from_the_link_that_cannot_be_used_are_named_not_dropped_silently(page, server, query, shown, ignored):
    """The page falls back to its defaults for what it cannot use, and says which of the link's values it ignored."""
    open_explorer(page, server, query, 0.0)
    assert page.locator("#model").input_value() == shown["model"]
    assert page.locator("#y-input").input_value() == shown["y"]
    assert page.locator("#num-samples").input_value() == shown["n"]
    page.wait_for_function("() => document.getElementById('status').textContent.includes('the defaults were used')")
    status = page.locator("#status").text_content()
    for part in ignored:
        assert part in status, status
    # said once: the next answer's line no longer carries it
    page.fill("#y-input", "1.5")
    page.press("#y-input", "Enter")
    wait_drawn(page, 1.5)
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('y = 1.5')")
    assert "defaults were used" not in page.locator("#status").text_content()
    page.watch.check()


def test_typed_samples_and_seed_are_read_whole_or_refused_by_name(page, server):
    """1e3 samples are 1000 and seed 1e5 is 100000 (parseInt read 1 and 1); a seed JavaScript cannot hold is named."""
    open_explorer(page, server, "model=gmm&objective=pq&y=0.5", 0.5)
    draws = page.evaluate("() => window.explorer.draws")
    page.fill("#num-samples", "2e2")
    page.fill("#seed", "1e5")
    page.dispatch_event("#seed", "change")
    page.wait_for_function(
        "d => window.explorer.draws > d && window.explorer.last.answers.pq.seed === 100000", arg=draws
    )
    answer = page.evaluate("() => window.explorer.last.answers.pq")
    assert answer["seed"] == 100000 and len(answer["samples"]["x"]) == 200
    assert "seed=100000" in page.url and "n=200" in page.url
    for seed in ("99999999999999999999", "9007199254740993"):
        page.fill("#seed", seed)
        page.dispatch_event("#seed", "change")
        page.wait_for_function("() => document.getElementById('status').textContent.includes('the seed must be')")
        assert f"(got {seed})" in page.locator("#status").text_content() and "seed=100000" in page.url
        page.fill("#seed", "100000")
        page.dispatch_event("#seed", "change")
        page.wait_for_function("() => !document.getElementById('status').textContent.includes('the seed must be')")
    page.watch.check()


def test_a_redraw_does_not_overwrite_the_y_being_typed(page, server):
    """A rebuild (objective changed) that finishes while y is being typed leaves the typed text alone.

    The page used to write state.y back into the number box when the rebuild's redraw started, so the
    Enter that followed sent the old y. The rebuild's first request is held until the typing is done.
    """
    open_explorer(page, server, "model=gmm_discrete&objective=qp&y=-2.5&n=400&seed=11", -2.5)
    held = []

    def hold(route):
        held.append(route)

    page.route("**/v1/models/gmm_discrete/exact?y=0", hold)
    page.locator("#objective-pq").check()  # the rebuild asks for exact?y=0 first: held
    while not held:
        page.wait_for_timeout(20)
    page.fill("#y-input", "3.25")  # typing, not yet entered
    with page.expect_response(lambda r: "/exact?y=-2.5" in r.url):  # the rebuild's redraw, for the old y
        held[0].continue_()
    page.unroute("**/v1/models/gmm_discrete/exact?y=0")
    assert page.locator("#y-input").input_value() == "3.25"
    page.press("#y-input", "Enter")
    wait_drawn(page, 3.25)
    last = page.evaluate("() => window.explorer.last")
    assert last["y"] == 3.25 and list(last["answers"]) == ["pq", "qp"] and "y=3.25" in page.url
    page.watch.check()


def test_model_and_objective_pickers_redraw_from_the_keyboard(page, server):
    page.goto(server + "/explore")
    page.wait_for_function("() => window.explorer && window.explorer.ready")
    assert "model=gmm" in page.url and "objective=both" in page.url  # defaults, written into the URL
    page.focus("#model")
    page.select_option("#model", "gaussian")
    wait_drawn(page, 0)
    page.wait_for_function("() => window.explorer.last.model === 'gaussian'")
    assert page.locator("#branches-figure").is_hidden()  # no discrete latent to draw
    page.focus("#objective-qp")
    page.keyboard.press("Space")  # uncheck qp
    page.wait_for_function("() => window.explorer.last.objectives.join() === 'pq'")
    assert "objective=pq" in page.url
    page.watch.check()
