"""/metrics counts every response, whatever rejected it, and never makes a label of what a client typed."""

import re

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from tests.conftest import ARTIFACTS


def samples(text: str, name: str) -> dict[str, float]:
    """{'label="value",...': value} of every sample of ``name`` in an exposition."""
    return {labels: float(value) for labels, value in re.findall(rf"^{name}\{{(.*?)\}} (\S+)$", text, re.MULTILINE)}


@pytest.fixture
def fresh():
    """An app of its own: its counters start at zero."""
    with TestClient(create_app(Settings(artifacts_dir=ARTIFACTS, max_body_bytes=2048))) as client:
        yield client


def test_every_posterior_response_is_counted_by_status(fresh):
    url = "/v1/models/{}/posterior"
    # request validation, before the endpoint
    assert fresh.post(url.format("gmm"), json={"y": "nope"}).status_code == 422
    # unknown model, before the endpoint
    assert fresh.post(url.format("bogus-model-x"), json={"y": 0.0}).status_code == 404
    assert fresh.post(url.format("gmm"), json={"y": 0.5, "objective": "qp", "num_samples": 10}).status_code == 200
    assert fresh.post(url.format("gmm"), json={"y": 0.5, "num_samples": 100_001}).status_code == 422  # validation too
    assert (
        fresh.post(
            url.format("gmm"), content=b"[" + b"0," * 2000 + b"0]", headers={"content-type": "application/json"}
        ).status_code
        == 413
    )
    text = fresh.get("/metrics").text
    assert samples(text, "amortized_posterior_requests_total") == {
        'code="422",model="gmm",objective="none"': 2.0,
        'code="404",model="unknown",objective="none"': 1.0,
        'code="200",model="gmm",objective="qp"': 1.0,
        'code="413",model="gmm",objective="none"': 1.0,
    }
    assert samples(text, "amortized_posterior_seconds_count") == {
        'model="gmm",objective="none"': 3.0,
        'model="gmm",objective="qp"': 1.0,
        'model="unknown",objective="none"': 1.0,
    }
    responses = samples(text, "amortized_http_responses_total")
    assert responses['code="422",method="POST",route="/v1/models/{model}/posterior"'] == 2.0
    assert responses['code="404",method="POST",route="/v1/models/{model}/posterior"'] == 1.0
    assert responses['code="413",method="POST",route="/v1/models/{model}/posterior"'] == 1.0
    assert samples(text, "amortized_observations_total") == {'model="gmm"': 1.0}
    assert "bogus" not in text


def test_other_routes_and_unmatched_paths_are_counted_without_their_path(fresh):
    fresh.get("/health/live")
    fresh.get("/v1/models/bogus-model-y")
    fresh.get("/no/such/path/bogus-path")
    fresh.request("BOGUSMETHOD", "/health/live")
    text = fresh.get("/metrics").text
    responses = samples(text, "amortized_http_responses_total")
    assert responses['code="200",method="GET",route="/health/live"'] == 1.0
    assert responses['code="404",method="GET",route="/v1/models/{model}"'] == 1.0
    assert responses['code="404",method="GET",route="unmatched"'] == 1.0
    assert responses['code="405",method="other",route="/health/live"'] == 1.0
    assert "bogus" not in text.lower()


def test_process_metrics_are_exposed(fresh):
    text = fresh.get("/metrics").text
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"):
        assert re.search(rf"^{name} \d", text, re.MULTILINE), name
