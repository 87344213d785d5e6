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


def call(app, scope: dict, messages: list[dict]) -> list[dict]:
    """Run an ASGI ``app`` on ``scope``, ``receive`` handing out ``messages`` in turn; what it sent."""
    import asyncio

    incoming, sent = list(messages), []

    async def receive() -> dict:
        return incoming.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


@pytest.mark.parametrize("gzip", [True, False], ids=["gzip body", "plain body"])
def test_a_client_that_hangs_up_mid_body_is_counted_499_not_500_or_400(gzip):
    """A gzip body cut short returned no response (counted 500: a 5xx alert for a client that left); a plain one
    got FastAPI's 400 "error parsing the body", sent to nobody."""
    app = create_app(Settings(artifacts_dir=ARTIFACTS))
    headers = [(b"content-type", b"application/json"), (b"content-length", b"100")]
    headers += [(b"content-encoding", b"gzip")] if gzip else []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/models/gmm/posterior",
        "raw_path": b"/v1/models/gmm/posterior",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    first_bytes = {"type": "http.request", "body": b"\x1f\x8b\x08", "more_body": True}
    call(app, scope, [first_bytes, {"type": "http.disconnect"}])
    with TestClient(app) as client:
        responses = samples(client.get("/metrics").text, "amortized_http_responses_total")
    posterior = {k: v for k, v in responses.items() if "/posterior" in k}
    assert posterior == {'code="499",method="POST",route="/v1/models/{model}/posterior"': 1.0}


def test_the_body_timeout_leaves_a_started_response_alone():
    """A response that streams while its request's body never completed awaits ``receive`` to notice a disconnect:
    the 408 may not fire in the middle of it (Starlette raised "response already started")."""
    import asyncio

    from service.middleware import BodyTimeout

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        message = await receive()  # a disconnect, after longer than the timeout
        await send({"type": "http.response.body", "body": message["type"].encode()})

    sent = []

    async def receive():
        await asyncio.sleep(0.3)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(BodyTimeout(app, seconds=0.1)({"type": "http", "method": "POST"}, receive, send))
    assert [m.get("status", m.get("body")) for m in sent] == [200, b"http.disconnect"]
