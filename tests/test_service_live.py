"""A real server: uvicorn started on a free port, queried with the project's httpx client."""

import numpy as np
import pytest

from client import AmortizedClient, ApiError
from tests.conftest import ARTIFACTS
from tests.launch import start_server, stop_server


@pytest.fixture(scope="module")
def server():
    process, url = start_server({"AMORTIZED_ARTIFACTS_DIR": str(ARTIFACTS)})
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
