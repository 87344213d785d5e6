"""Trust at every sample size, and the fault kinds found by trying public bug reports of similar systems.

Each test holds the right value against an independent reference: the closed
form, a replay of the same request, the HTTP specification, or plain NumPy.
"""

import gzip
import json
import math
import shutil
import threading

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from amortized.diagnostics import MIN_JUDGED_SAMPLES, analyse
from amortized.distributions import BranchedNormal
from amortized.evaluation import best_in_family
from amortized.importance.streams import SEED_BITS
from amortized.models import build_model
from service.main import create_app
from service.routers import posterior as posterior_router
from service.settings import Settings
from tests.conftest import ARTIFACTS

URL = "/v1/models/{}/posterior"


def post(client, model, **body):
    response = client.post(URL.format(model), json=body)
    assert response.status_code == 200, response.text
    return response.json()


# --- the verdict at every N ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_samples", [1, 2, 3, 10, MIN_JUDGED_SAMPLES - 1])
def test_below_the_judged_sample_size_nothing_is_reliable(client, num_samples):
    """Even the exact posterior as q: too few draws to judge the weights, and the reason says what was not checked."""
    for model in ("gaussian", "gmm_open", "gmm"):
        for seed in range(3):
            d = post(client, model, y=0.4, objective="pq", num_samples=num_samples, seed=seed)["diagnostics"]
            assert d["verdict"] != "reliable", (model, d)
            assert f"below the {MIN_JUDGED_SAMPLES}" in d["reason"] and "not checked" in d["reason"]
            if num_samples == 1:
                assert d["log_evidence_se"] is None  # undefined with one draw: null, never 0
            else:
                assert d["log_evidence_se"] is not None and d["log_evidence_se"] >= 0


def test_the_standard_error_with_two_draws_is_the_delta_method_value(client):
    """sqrt(1/ESS - 1/N) from the answer's own log weights (plain NumPy)."""
    data = post(client, "gmm", y=3.0, objective="pq", num_samples=2, seed=5)
    w = np.exp(np.array(data["log_weights"]) - max(data["log_weights"]))
    ess = w.sum() ** 2 / (w**2).sum()
    assert data["diagnostics"]["log_evidence_se"] == pytest.approx(
        math.sqrt(max(1 / ess - 1 / 2, 0.0)), rel=1e-9, abs=1e-12
    )


@pytest.mark.parametrize(
    "model, objective, y", [("gmm_open", "pq", 30.0), ("gmm_open", "qp", 30.0), ("gmm", "qp", 2e4)]
)
def test_no_standard_error_is_claimed_for_weights_that_are_unreliable_by_themselves(client, model, objective, y):
    """With collapsed or heavy-tailed weights the delta-method error sqrt(1/ESS - 1/N) stays below 1 nat while the
    estimate misses log p(y) by tens of nats or more (the closed form): it was reported as if it bounded the error.
    It is null there; the verdict and its reason say why."""
    data = post(client, model, y=y, objective=objective, num_samples=1000, seed=1)
    d, exact = data["diagnostics"], data["exact"]
    assert d["verdict"] == "unreliable" and ("heavy-tailed" in d["reason"] or "collapsed" in d["reason"])
    assert d["log_evidence_se"] is None
    claimed = math.sqrt(max(1 / d["ess"] - 1 / 1000, 0.0))  # what used to be reported
    assert abs(d["log_evidence"] - exact["log_evidence"]) > 10 * max(claimed, 1.0)


def test_a_standard_error_is_reported_wherever_the_weights_themselves_are_usable(client):
    """The same delta-method value as before wherever q's own weights pass (a finite k-hat within the bounds)."""
    for model in ("gaussian", "gmm", "gmm_open", "gmm_discrete"):
        for y in (-3.0, 0.3, 4.0):
            data = post(client, model, y=y, objective="pq", num_samples=1000, seed=2)
            d = data["diagnostics"]
            w = np.exp(np.array(data["log_weights"]) - max(data["log_weights"]))
            ess = w.sum() ** 2 / (w**2).sum()
            if "heavy-tailed" in d["reason"] or "collapsed" in d["reason"] or "needs at least" in d["reason"]:
                assert d["log_evidence_se"] is None, (model, y, d)
            else:
                assert d["log_evidence_se"] == pytest.approx(math.sqrt(1 / ess - 1 / 1000), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("num_samples", [2, 10, 100, 1000])
def test_the_cross_check_catches_a_missed_mode_at_any_sample_size(client, num_samples):
    """gmm at y = -20.7: the qp network sits on the heavier mode; the other holds 11.4% of the mass (closed form)."""
    model = build_model("gmm")
    light = float(model.exact_posterior(np.array([-20.7])).probs.min())
    assert 0.10 < light < 0.12
    flagged = 0
    for seed in range(10):
        d = post(client, "gmm", y=-20.7, objective="qp", num_samples=num_samples, seed=seed)["diagnostics"]
        check = d["cross_check"]
        assert check["num_samples"] == max(num_samples, 1000)
        assert d["verdict"] != "reliable", d["reason"]
        flagged += check["misses_mass"] and d["verdict"] == "unreliable"
        assert abs(check["missed_mass"] - light) < 4 * check["missed_mass_se"] + 0.01
    assert flagged >= 8


def test_a_missed_mode_the_covering_proposal_barely_reaches_is_never_called_reliable():
    """With the moment-matched normal as the other proposal the missed mode is reached by few draws.

    At least not reliable.
    """
    model = build_model("gmm")
    y = np.array([-20.7])
    mode_fit, covering = (best_in_family(model, torch.tensor(y), d).numpy() for d in ("qp", "pq"))
    for num_samples in (2, 100, 1000):
        for seed in range(5):
            result = analyse(model, y, mode_fit, num_samples, np.random.default_rng(seed), other=covering)
            assert result.verdict != ["reliable"], result.reason


def test_the_missed_mass_of_a_covering_q_is_zero():
    """The moment-matched q covers both modes.

    No posterior mass lies where its density is under 1% of the posterior's.
    """
    model = build_model("gmm")
    y = np.array([-20.7, 0.0, 8.0])
    covering, mode_fit = (best_in_family(model, torch.tensor(y), d).numpy() for d in ("pq", "qp"))
    result = analyse(model, y, covering, 1000, np.random.default_rng(3), other=mode_fit)
    assert (result.cross_check.missed_mass == 0).all() and not result.cross_check.misses_mass.any()


@pytest.mark.parametrize("model", ["gaussian", "gmm_open"])
@pytest.mark.parametrize("y", [1e6, -1e9, 1e9])
def test_where_neither_network_covers_the_posterior_the_check_reports_no_missed_mass_figure(client, model, y):
    """Far outside p(y) both networks miss the posterior by thousands of its stds (the exact answer says so), so the
    pooled draws carry about one effective draw: "0% +- 0% missed" (y = 1e9) or "100% +- 0%" were one draw's say."""
    for objective in ("pq", "qp"):
        data = post(
            client, model, y=y, objective=objective, num_samples=1000, seed=3, include=["q", "diagnostics", "exact"]
        )
        exact, d = data["exact"], data["diagnostics"]
        q_means = [branch["mean"] for branch in data["q"]["branches"]]
        assert (
            min(abs(m - exact["posterior_mean_x"]) for m in q_means) > 30 * exact["posterior_std_x"]
        )  # q densities of exp(-450) there
        check = d["cross_check"]
        assert check["missed_mass"] is None and check["missed_mass_se"] is None and check["misses_mass"] is True
        assert d["verdict"] == "unreliable" and "cannot tell whether q misses posterior mass" in d["reason"]
        assert "finds no missed mass" not in d["reason"]


@pytest.mark.parametrize("seed", [1, 3, 7])
def test_a_missed_region_no_draw_reaches_is_not_ruled_out(client, seed):
    """gaussian at y = 2e4: pq's q sits 1.7 posterior stds low and qp's 15, so neither network's draws reach the upper
    tail where q's density is under 1% of the posterior's; the check claimed "at most 0.0%" of the posterior there
    (a mass estimated as 0 has a delta-method error of 0). The truth, by quadrature, is above the 1% floor, so the
    answer is not reliable and the reason says the check cannot rule it out (the rule of three bounds it)."""
    data = post(
        client, "gaussian", y=2e4, objective="pq", num_samples=1000, seed=seed, include=["q", "diagnostics", "exact"]
    )
    (branch,) = data["q"]["branches"]
    exact = data["exact"]
    x = np.linspace(
        exact["posterior_mean_x"] - 12 * exact["posterior_std_x"],
        exact["posterior_mean_x"] + 12 * exact["posterior_std_x"],
        200_001,
    )
    log_p = -0.5 * ((x - exact["posterior_mean_x"]) / exact["posterior_std_x"]) ** 2 - math.log(
        exact["posterior_std_x"]
    )
    log_q = -0.5 * ((x - branch["mean"]) / branch["std"]) ** 2 - math.log(branch["std"])
    density = np.exp(log_p) / math.sqrt(2 * math.pi)
    missed = (density * (log_q - log_p < math.log(0.01))).sum() * (x[1] - x[0])
    assert missed > 0.01  # the truth: q misses more than the floor
    d = data["diagnostics"]
    assert d["verdict"] != "reliable", d["reason"]
    assert "finds no missed mass" not in d["reason"] and "cannot rule out that q misses posterior mass" in d["reason"]


def test_without_the_cross_check_nothing_is_reliable_and_the_reason_says_so(client):
    d = post(client, "gaussian", y=0.3, num_samples=1000, seed=1, cross_check=False)["diagnostics"]
    assert d["cross_check"] is None and d["verdict"] == "usable"
    assert "missed-mode check did not run (cross_check was false)" in d["reason"]
    on = post(client, "gaussian", y=0.3, num_samples=1000, seed=1)["diagnostics"]
    assert on["verdict"] == "reliable" and "finds no missed mass" in on["reason"]


def test_a_k_hat_that_cannot_be_fitted_says_why():
    """A q far from the posterior: all weight on one draw, k-hat NaN, and the reason names the collapse."""
    model = build_model("gaussian")
    y = np.array([0.0])
    far = BranchedNormal(np.zeros((1, 1)), np.zeros((1, 1)), np.full((1, 1), 1000.0))  # log weights span ~1e6 nats
    result = analyse(model, y, far, 1000, np.random.default_rng(0))
    assert math.isnan(result.pareto_k.item()) and result.ess.item() < 1.5
    assert (
        result.verdict == ["unreliable"]
        and "collapsed on one draw" in result.reason[0]
        and "nan" not in result.reason[0]
    )


# --- exact numbers at every y ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("y", [3e8, -3e8, 1e6, 12345.678, 0.0])
def test_the_exact_posterior_std_has_no_cancellation(client, y):
    """gaussian: std(x | y) = (1/s0^2 + 1/sigma^2)^(-1/2) = 0.70711 for every y (closed form)."""
    params = build_model("gaussian").params
    truth = (1 / params.sigma0**2 + 1 / params.sigma**2) ** -0.5
    data = post(client, "gaussian", y=y, num_samples=100, seed=1)
    assert data["exact"]["posterior_std_x"] == pytest.approx(truth, rel=1e-12)


def test_mixture_std_is_shift_invariant():
    """std of a branched normal shifted by 3e8 equals the unshifted one (where E[x^2] - mean^2 loses every digit)."""
    rng = np.random.default_rng(0)
    log_probs = np.log(rng.dirichlet(np.ones(4), size=6))
    means, stds = rng.normal(size=(6, 4)), rng.uniform(0.1, 2.0, (6, 4))
    base = BranchedNormal(log_probs, means, stds).std_x()
    for shift in (3e8, -1e9, 1e6):
        np.testing.assert_allclose(BranchedNormal(log_probs, means + shift, stds).std_x(), base, rtol=1e-6)


# --- seeds: below 2**53, one per row, each row and each half reproducible alone ---------------------------------------


def test_drawn_seeds_survive_a_javascript_number(client):
    """Every drawn seed (request and rows) is below 2**53: a float64 (a JavaScript number, jq) holds it exactly."""
    for _ in range(50):
        data = post(client, "gaussian", y=[0.1, 0.2], num_samples=5)
        seeds = [data["seed"], *(r["seed"] for r in data["results"])]
        assert all(0 <= s < 2**SEED_BITS and int(float(s)) == s for s in seeds)


@pytest.mark.parametrize("objective", ["pq", "both"])
def test_each_row_of_a_batch_replays_alone_with_its_seed(client, objective):
    ys = [-3.0, 0.5, 0.5, 9.0]
    batch = post(client, "gmm_open", y=ys, objective=objective, num_samples=200, seed=2**60 + 3, resample=True)[
        "results"
    ]
    assert len({row["seed"] for row in batch}) == len(ys)  # the repeated y gets other draws
    for y, row in zip(ys, batch):
        alone = post(client, "gmm_open", y=y, objective=objective, num_samples=200, seed=row["seed"], resample=True)
        assert json.dumps(alone) == json.dumps(row)


def test_each_half_of_both_is_its_objective_alone(client):
    both = post(client, "gmm", y=[0.0, 4.0], objective="both", num_samples=300, seed=17)["results"]
    for row in both:
        for objective, half in row["objectives"].items():
            alone = post(client, "gmm", y=row["y"], objective=objective, num_samples=300, seed=row["seed"])
            assert half["seed"] == row["seed"] and json.dumps(alone) == json.dumps(half)


# --- HTTP: HEAD, Content-Encoding, errors about y, refused artifacts, the event loop ----------------------------------


def test_head_answers_on_every_get_route(client, app):
    """RFC 9110 9.3.2: HEAD gets GET's status and headers, and no body."""
    paths = {
        "/v1/models/{model}": "/v1/models/gmm",
        "/v1/models/{model}/posterior.png": "/v1/models/gmm/posterior.png?y=0",
        "/v1/models/{model}/exact": "/v1/models/gmm/exact?y=0",
    }
    routes = [path for path, operations in app.openapi()["paths"].items() if "get" in operations] + [
        "/openapi.json",
        "/docs",
        "/redoc",
        "/",
        "/explore",
    ]
    assert len(routes) >= 7
    # the job endpoints are off in this app (no AMORTIZED_ADMIN_TOKEN): GET and HEAD both answer 403
    off = {path for path, ops in app.openapi()["paths"].items() if "jobs" in ops.get("get", {}).get("tags", [])}
    for route in routes:
        path = paths.get(route, route)
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == (403 if route in off else 200), route
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"], route
    assert client.head("/v1/models/gmm/posterior").status_code == 405  # POST only: HEAD is no more allowed than GET


def test_gzip_bodies_are_decoded_and_mislabelled_ones_refused(client):
    body = json.dumps({"y": [0.5, 2.0], "num_samples": 50, "seed": 3}).encode()
    plain = client.post(URL.format("gmm"), content=body, headers={"content-type": "application/json"})
    zipped = client.post(
        URL.format("gmm"),
        content=gzip.compress(body),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert zipped.status_code == 200 and zipped.content == plain.content
    for alias in ("x-gzip", "X-Gzip"):  # the same coding (RFC 9110, 8.4.1.3)
        aliased = client.post(
            URL.format("gmm"),
            content=gzip.compress(body),
            headers={"content-type": "application/json", "content-encoding": alias},
        )
        assert aliased.status_code == 200 and aliased.content == plain.content, alias
    mislabelled = client.post(
        URL.format("gmm"), content=body, headers={"content-type": "application/json", "content-encoding": "gzip"}
    )
    assert mislabelled.status_code == 400 and mislabelled.json()["detail"][0]["loc"] == ["header", "content-encoding"]
    for coding in ("br", "zstd", "gzip, br"):
        other = client.post(
            URL.format("gmm"), content=body, headers={"content-type": "application/json", "content-encoding": coding}
        )
        assert other.status_code == 415 and other.json()["detail"][0]["loc"] == ["header", "content-encoding"], coding
    bomb = gzip.compress(b"[" + b"0," * 2_000_000 + b"0]")  # 4 MB of JSON in a few kB
    assert len(bomb) < 1_048_576
    refused = client.post(
        URL.format("gmm"), content=bomb, headers={"content-type": "application/json", "content-encoding": "gzip"}
    )
    assert refused.status_code == 413 and "once decoded" in refused.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    "bad, expected",
    [
        (["a", 1.0, None, 2.0], [2, 0, 2, None]),  # positions of the bad values: 0 and 2
        ([1.0, 2.0, {"x": 1}], [None, None, 2, None]),
    ],
)
def test_errors_about_y_name_each_bad_value_once(client, bad, expected):
    response = client.post(URL.format("gmm"), json={"y": bad})
    items = response.json()["detail"]
    assert response.status_code == 422
    locs = [item["loc"] for item in items]
    bad_positions = [i for i, v in enumerate(bad) if not isinstance(v, float)]
    assert locs == [["body", "y", i] for i in bad_positions]
    assert not any("constrained" in str(part) for loc in locs for part in loc)


@pytest.mark.parametrize(
    "literal", ["1" + "0" * 400, "-1" + "0" * 400, "1e400", "-1e400", "[0.5, 1e999]", "[1, " + "9" * 500 + "]"]
)
def test_numbers_beyond_any_float_are_out_of_range(client, literal):
    response = client.post(
        URL.format("gmm"), content=f'{{"y": {literal}}}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    items = response.json()["detail"]
    assert len(items) == 1 and items[0]["type"] == "out_of_range" and "out of range" in items[0]["msg"]
    assert items[0]["loc"] == (["body", "y", 1] if literal.startswith("[") else ["body", "y"])
    if not literal.startswith("["):  # the same number in a query string: out of range too (was less_than_equal)
        for path, loc in (("exact?y=", ["query", "y", 0]), ("posterior.png?y=", ["query", "y"])):
            query = client.get(f"/v1/models/gmm/{path}{literal}").json()["detail"]
            assert [(item["loc"], item["type"]) for item in query] == [(loc, "out_of_range")], query


def test_a_refused_artifact_is_named_with_its_reason(tmp_path):
    shutil.copytree(ARTIFACTS, tmp_path / "artifacts")
    qp = tmp_path / "artifacts" / "gmm" / "qp.json"
    qp.write_text(qp.read_text().replace('"sha256": "', '"sha256": "0', 1))  # the checksum no longer matches
    for name in ("pq.json", "qp.json"):  # gaussian: every artifact refused
        path = tmp_path / "artifacts" / "gaussian" / name
        path.write_text("{not json")
    with TestClient(create_app(Settings(artifacts_dir=tmp_path / "artifacts"))) as client:
        response = client.post(URL.format("gmm"), json={"y": 0.0, "objective": "qp"})
        assert response.status_code == 404
        item = response.json()["detail"][0]
        assert item["type"] == "refused" and "qp was refused" in item["msg"] and "checksum mismatch" in item["msg"]
        assert client.post(URL.format("gmm"), json={"y": 0.0, "objective": "pq"}).status_code == 200
        whole = client.post(URL.format("gaussian"), json={"y": 0.0}).json()["detail"][0]
        assert whole["type"] == "refused" and "refused" in whole["msg"]
        unknown = client.post(URL.format("nosuch"), json={"y": 0.0}).json()["detail"][0]
        assert unknown["type"] == "not_found"


def test_heavy_both_requests_run_off_the_event_loop(monkeypatch):
    """The off-loop threshold counts both objectives and the cross-check's draws, not observations x samples alone."""
    threads: list[str] = []
    original = posterior_router.answer

    def recording(query):
        threads.append(threading.current_thread().name)
        return original(query)

    monkeypatch.setattr(posterior_router, "answer", recording)
    settings = Settings(artifacts_dir=ARTIFACTS, offload_samples=50_000, micro_batch=False)
    with TestClient(create_app(settings)) as client:
        loop_thread = client.portal.call(lambda: threading.current_thread().name)
        # 20k x 2 objectives x 2 with the check
        post(client, "gmm", y=0.0, objective="both", num_samples=20_000, seed=1)
        post(client, "gmm", y=0.0, objective="pq", num_samples=1000, seed=1, cross_check=False)
    assert threads[0] != loop_thread and threads[1] == loop_thread
