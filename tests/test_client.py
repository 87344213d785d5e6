"""The Python client: Arrow by default with the same numbers as JSON, JSON when refused, and a light install alone."""

import json
import subprocess
import sys
import textwrap
import venv

import httpx
import numpy as np
import pytest

import client as client_module
from client import AmortizedClient
from service.schemas import SUMMARY_SOURCES
from tests.conftest import ARTIFACTS, ROOT
from tests.launch import start_server, stop_server

SERVER_ONLY = ("torch", "numba", "matplotlib", "scipy", "fastapi")


class RefusesArrow(httpx.BaseTransport):
    """A server that answers JSON only: 406 to an Arrow Accept, the app's own answer otherwise."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner, self.refused = inner, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if client_module.ARROW in request.headers.get("accept", ""):
            self.refused += 1
            detail = [{"loc": ["header", "accept"], "msg": "only application/json", "type": "not_acceptable"}]
            return httpx.Response(406, json={"detail": detail})
        return self.inner.handle_request(request)


def same(a, b) -> None:
    """Equal arrays, floats to the bit (NaN where the other has NaN)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype.kind == b.dtype.kind, (a, b)
    if a.dtype.kind == "f":
        assert a.tobytes() == b.tobytes()
    else:
        assert a.tolist() == b.tolist()


def test_arrow_and_json_give_the_client_the_same_arrays(client):
    body = dict(objective="both", num_samples=300, seed=6, resample=True)
    y = [0.5, -9.0, 2.7]
    with AmortizedClient(transport=client._transport, base_url="http://testserver") as arrow_api:
        assert arrow_api.format == "arrow"
        arrow = arrow_api.posterior_arrays("gmm_open", y, **body)
        arrow_rows = arrow_api.posterior("gmm_open", y, **body)
    with AmortizedClient(transport=client._transport, base_url="http://testserver", format="json") as json_api:
        plain = json_api.posterior_arrays("gmm_open", y, **body)
        plain_rows = json_api.posterior("gmm_open", y, **body)
    for objective in ("pq", "qp"):
        a, b = arrow[objective], plain[objective]
        assert a.x.shape == (3, 300) and np.isnan(a.latents["z"][a.latents["k"] == 1]).all()
        for name in ("y", "seeds", "branch_probabilities", "branch_means", "branch_stds", "x", "log_weights"):
            same(getattr(a, name), getattr(b, name))
        for group in ("latents", "resampled", "diagnostics", "exact"):
            assert list(getattr(a, group)) == list(getattr(b, group)), group
            for key in getattr(a, group):
                same(getattr(a, group)[key], getattr(b, group)[key])
        assert a.versions == b.versions and a.branch_latents == b.branch_latents
        for ours, theirs in zip(arrow_rows, plain_rows):
            assert ours[objective].diagnostics == theirs[objective].diagnostics
            assert ours[objective].exact == theirs[objective].exact
            same(ours[objective].x, theirs[objective].x)


def test_arrow_columns_read_alike_in_one_chunk_or_several_and_versions_name_the_networks_that_answered(client):
    """One chunk is read without a copy, several are joined; a network that took no part is left out of versions."""
    import pyarrow as pa

    body = {"y": [0.5, -3.0, 8.0], "objective": "pq", "num_samples": 50, "seed": 2, "cross_check": False}
    response = client.post("/v1/models/gmm/posterior", json=body, headers={"accept": client_module.ARROW})
    table = pa.ipc.open_stream(response.content).read_all()
    whole = client_module.PosteriorArrays.from_arrow(table)
    chunked = client_module.PosteriorArrays.from_arrow(pa.concat_tables([table.slice(0, 1), table.slice(1)]))
    assert table.column("log_weights").num_chunks == 1 and np.shares_memory(
        whole.log_weights, np.frombuffer(table.column("log_weights").chunk(0).values.buffers()[1], np.float64)
    )
    version = client.get("/v1/models/gmm").json()["versions"]["pq"]
    assert whole.versions == chunked.versions == [{"pq": version}] * 3
    for name in ("x", "log_weights", "y"):
        same(getattr(whole, name), getattr(chunked, name))
    for key in whole.diagnostics:
        same(whole.diagnostics[key], chunked.diagnostics[key])


def test_summaries_reach_the_client_as_columns(client):
    with AmortizedClient(transport=client._transport, base_url="http://testserver") as api:
        columns = api.posterior_arrays("gmm", [0.0, 3.0], num_samples=0, include=["summary", "summary.exact"])
        assert columns.x is None and set(columns.summary) >= {"q.quantiles.0.5", "exact.intervals.0.95"}
        assert columns.summary["exact.intervals.0.95"].shape == (2, 2)
        one = api.posterior("gmm", 0.0, num_samples=100, seed=1, include=list(SUMMARY_SOURCES))
        assert set(one.summary) == {"q", "weighted", "exact"} and one.x.size == 0


def test_a_server_that_refuses_arrow_is_asked_in_json(client):
    transport = RefusesArrow(client._transport)
    with AmortizedClient(transport=transport, base_url="http://testserver") as api:
        answer = api.posterior("gmm", 0.0, num_samples=50, seed=2)
        again = api.posterior("gmm", 1.0, num_samples=50, seed=2)
    assert transport.refused == 1 and api.format == "json"
    assert answer.x.shape == again.x.shape == (50,)


@pytest.fixture(scope="module")
def light_client(tmp_path_factory):
    """A fresh virtualenv with ``pip install ./client`` and nothing else; skipped only if the index is unreachable."""
    folder = tmp_path_factory.mktemp("light") / "venv"
    venv.create(folder, with_pip=True)
    python = folder / "bin" / "python"
    installed = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT / "client")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if installed.returncode != 0:
        unreachable = ("Could not find a version", "No matching distribution", "connection", "Network", "resolve")
        if any(word in installed.stderr for word in unreachable):
            pytest.skip(f"the package index is unreachable: {installed.stderr.strip().splitlines()[-1]}")
        raise AssertionError(installed.stderr)
    return python


def test_the_client_installs_alone_without_the_servers_dependencies(light_client):
    listed = subprocess.run(
        [light_client, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True
    )
    names = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert {"amortized-client", "httpx", "numpy", "pyarrow"} <= names
    assert not names & set(SERVER_ONLY), names & set(SERVER_ONLY)


def test_the_light_client_reads_arrow_from_a_real_server(light_client, tmp_path):
    process, url = start_server({"AMORTIZED_ARTIFACTS_DIR": str(ARTIFACTS)})
    script = textwrap.dedent(
        f"""
        import sys
        from client import AmortizedClient
        assert "torch" not in sys.modules
        with AmortizedClient({url!r}) as api:
            columns = api.posterior_arrays("gmm_discrete", [-8.0, 0.5, 12.0], num_samples=200, seed=3)
            print(api.format, columns.x.shape, columns.diagnostics["verdict"].tolist(), "torch" in sys.modules)
        """
    )
    try:
        # run from an empty folder, so that the checkout's own client/ is not what gets imported
        ran = subprocess.run([light_client, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    finally:
        stop_server(process)
    assert ran.returncode == 0, ran.stderr
    words = ran.stdout.split()
    assert words[:3] == ["arrow", "(3,", "200)"] and words[-1] == "False", ran.stdout


def test_the_checkout_runs_the_client_it_installs():
    assert client_module.__file__.startswith(str(ROOT / "client")), client_module.__file__
    assert sys.modules["client"] is client_module
