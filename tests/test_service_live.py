"""A real server: uvicorn started on a free port, queried with the project's httpx client."""

import gzip
import json
import socket
import time

import numpy as np
import pytest

from client import AmortizedClient, ApiError
from tests.conftest import ARTIFACTS
from tests.launch import start_server, stop_server


@pytest.fixture(scope="module")
def server():
    process, url = start_server({"AMORTIZED_ARTIFACTS_DIR": str(ARTIFACTS), "AMORTIZED_BODY_TIMEOUT_SECONDS": "1"})
    yield url
    stop_server(process)


def test_client_gets_numpy_answers_from_a_real_server(server):
    with AmortizedClient(server) as api:
        assert {m["name"] for m in api.models()} >= {
            "gaussian",
            "gmm",
            "gmm_discrete",
            "gmm_open",
            "gmm_sigma5",
            "gmm_open_k3",
        }
        answer = api.posterior("gmm_open", 0.5, objective="qp", num_samples=400, seed=5, resample=True)
        assert answer.x.shape == answer.log_weights.shape == (400,) and answer.x.dtype == np.float64
        assert np.isnan(answer.latents["z"][answer.latents["k"] == 1]).all()  # z does not exist when k = 1
        assert set(np.unique(answer.latents["k"])) <= {1.0, 2.0}
        assert abs(answer.branch_probabilities.sum() - 1) < 1e-6
        assert answer.resampled["x"].shape == (400,)
        both = api.posterior("gmm", [0.0, 4.0], objective="both", num_samples=200, seed=1)
        assert len(both) == 2 and set(both[0]) == {"pq", "qp"}
        # mode-seeking against mass-covering
        assert both[0]["qp"].branch_stds[0] < 1.1 and both[0]["pq"].branch_stds[0] > 4.5
        assert api.model("gaussian")["artifacts"]["pq"]["metrics"]["linear"]["a"]["abs_error"] < 0.01
        versions = {m["name"]: m["versions"] for m in api.models()}
        pinned = api.posterior(
            "gmm_sigma5", 3.0, objective="qp", num_samples=50, seed=1, version=versions["gmm_sigma5"]["qp"]
        )
        assert pinned.versions == versions["gmm_sigma5"]


def test_client_raises_the_servers_reason(server):
    with AmortizedClient(server) as api:
        with pytest.raises(ApiError) as error:
            api.posterior("gmm", 1.0, num_samples=0)
        assert error.value.status == 422 and error.value.detail[0]["loc"] == ["body", "num_samples"]
        with pytest.raises(ApiError) as error:
            api.posterior("nope", 1.0)
        assert error.value.status == 404
        with pytest.raises(ApiError) as error:
            api.posterior("gmm", 1.0, version="0123456789abcdef")
        assert error.value.status == 409 and "served versions" in error.value.detail[0]["msg"]


def exchange(url: str, head: bytes, parts: list[bytes], pause: float = 0.0) -> tuple[bytes, float, bool]:
    """Send a raw request (``parts`` of its body ``pause`` s apart); the response, its time, and whether the server
    closed the connection after it."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(head)
        for i, part in enumerate(parts):
            if i:
                time.sleep(pause)
            sock.sendall(part)
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        headers, _, body = received.partition(b"\r\n\r\n")
        length = int(next(line for line in headers.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
        while len(body) < length:
            body += sock.recv(65536)
        elapsed = time.monotonic() - started
        sock.settimeout(3)
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
    return headers + b"\r\n\r\n" + body[:length], elapsed, closed


@pytest.mark.parametrize(
    "path, encoding, body",
    [
        ("/v1/models/gmm/posterior", b"", b'{"y": 0}'),
        ("/v1/models/gmm_open/posterior", b"", b""),
        ("/v1/models/gmm/posterior", b"Content-Encoding: gzip\r\n", gzip.compress(b'{"y": 0}')[:10]),
    ],
    ids=["short body", "no body", "short gzip body"],
)
def test_a_body_shorter_than_its_content_length_gets_408_naming_the_body_and_the_connection_closes(
    server, path, encoding, body
):
    """uvicorn waited for the missing bytes as long as the client kept the connection open (for ever)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
        + encoding
        + f"Content-Length: {len(body) + 93}\r\n\r\n".encode()
    )
    response, elapsed, closed = exchange(server, head, [body])
    status, _, rest = response.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout" and b"connection: close" in rest.lower()
    (error,) = json.loads(rest.partition(b"\r\n\r\n")[2])["detail"]
    assert error["loc"] == ["body"] and "AMORTIZED_BODY_TIMEOUT_SECONDS" in error["msg"]
    assert 0.9 < elapsed < 8 and closed


def test_a_slow_body_that_keeps_arriving_is_answered(server):
    """The timeout is on each wait for more of the body, not on the whole: three parts 0.6 s apart (1.2 s in all)."""
    body = b'{"y": 0.5, "num_samples": 10, "seed": 4}'
    head = b"POST /v1/models/gmm/posterior HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n".encode()
    response, elapsed, _ = exchange(server, head, [body[:10], body[10:20], body[20:]], pause=0.6)
    assert response.startswith(b"HTTP/1.1 200 OK") and elapsed > 1.2
    answer = json.loads(response.partition(b"\r\n\r\n")[2])
    with AmortizedClient(server) as api:
        assert answer["log_weights"] == api.posterior("gmm", 0.5, num_samples=10, seed=4).log_weights.tolist()


def test_a_gzip_body_of_two_members_arriving_in_parts_is_answered_whole(server):
    """Over a real connection, the second member's magic split between two parts: decoded as the parts arrive."""
    body = b'{"y": 0.5, "num_samples": 10, "seed": 4}'
    first, second = gzip.compress(body[:12]), gzip.compress(body[12:])
    raw = first + second
    assert gzip.decompress(raw) == body
    head = b"POST /v1/models/gmm/posterior HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += f"Content-Encoding: gzip\r\nContent-Length: {len(raw)}\r\n\r\n".encode()
    parts = [raw[: len(first) - 3], raw[len(first) - 3 : len(first) + 1], raw[len(first) + 1 :]]
    response, _, _ = exchange(server, head, parts, pause=0.1)
    assert response.startswith(b"HTTP/1.1 200 OK"), response[:300]
    answer = json.loads(response.partition(b"\r\n\r\n")[2])
    with AmortizedClient(server) as api:
        assert answer["log_weights"] == api.posterior("gmm", 0.5, num_samples=10, seed=4).log_weights.tolist()


@pytest.mark.parametrize(
    "request_line, allowed",
    [
        (b"GET /v1/models/gmm/posterior", b"POST"),
        (b"DELETE /v1/models", b"GET, HEAD, POST"),
        (b"POST /health/live", b"GET, HEAD"),
    ],
)
def test_a_405_on_the_wire_carries_the_allowed_methods(server, request_line, allowed):
    """``curl -i -X GET .../posterior`` showed ``allow: `` (empty); RFC 9110, 15.5.6 requires the methods."""
    response, _, _ = exchange(server, request_line + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", [])
    status, _, rest = response.partition(b"\r\n")
    headers = rest.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")
    assert status == b"HTTP/1.1 405 Method Not Allowed" and b"allow: " + allowed.lower() in headers, response
