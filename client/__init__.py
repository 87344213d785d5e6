"""A small Python client for the service, returning numpy arrays.

from client import AmortizedClient
with AmortizedClient("http://127.0.0.1:8000") as api:
    answer = api.posterior("gmm", 0.0, objective="qp", num_samples=1000, seed=7)
    answer.x, answer.latents["z"], answer.log_weights, answer.diagnostics["verdict"]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Self

import httpx
import numpy as np


class ApiError(Exception):
    """A 4xx/5xx answer: ``status`` and the server's ``detail`` list (where and why)."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


def column(values: list) -> np.ndarray:
    """A sample column as numpy: float64, with NaN where the latent does not exist (null)."""
    return (
        np.array([np.nan if v is None else v for v in values], dtype=float)
        if None in values
        else np.asarray(values, dtype=float)
    )


@dataclass(frozen=True)
class Posterior:
    """One network's answer for one observation, as arrays."""

    y: float
    objective: str
    branch_latents: list[dict[str, int]]
    branch_probabilities: np.ndarray
    branch_means: np.ndarray
    branch_stds: np.ndarray
    x: np.ndarray
    latents: dict[str, np.ndarray]
    log_weights: np.ndarray
    diagnostics: dict[str, Any]
    exact: dict[str, Any]
    resampled: dict[str, np.ndarray] | None = None
    versions: dict[str, str] = field(default_factory=dict)  # {objective: version} of the networks that answered
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Posterior:
        branches = body["q"]["branches"]
        samples = {name: column(values) for name, values in body["samples"].items()}
        resampled = body.get("resampled")
        return cls(
            y=body["y"],
            objective=body["objective"],
            branch_latents=[b["latents"] for b in branches],
            branch_probabilities=np.array([b["probability"] for b in branches]),
            branch_means=np.array([b["mean"] for b in branches]),
            branch_stds=np.array([b["std"] for b in branches]),
            x=samples.pop("x"),
            latents=samples,
            log_weights=column(body["log_weights"]),
            diagnostics=body["diagnostics"],
            exact=body["exact"],
            resampled=None if resampled is None else {name: column(v) for name, v in resampled.items()},
            versions=body.get("versions", {}),
            raw=body,
        )


def parse(body: dict[str, Any]) -> Posterior | dict[str, Posterior]:
    if "objectives" in body:
        return {name: Posterior.from_json(result) for name, result in body["objectives"].items()}
    return Posterior.from_json(body)


class AmortizedClient:
    """Synchronous client over httpx; use as a context manager or call ``close()``."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", timeout: float = 60.0, **httpx_options: Any) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout, **httpx_options)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response.json()

    def models(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/models")

    def model(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/models/{name}")

    def ready(self) -> bool:
        return self._http.get("/health/ready").status_code == 200

    def posterior(
        self,
        model: str,
        y: float | list[float],
        objective: str = "pq",
        num_samples: int = 1000,
        seed: int | None = None,
        resample: bool = False,
        cross_check: bool = True,
        version: str | dict[str, str] | None = None,
    ) -> Posterior | dict[str, Posterior] | list[Posterior | dict[str, Posterior]]:
        """One answer for a scalar y, a list for a list; ``objective="both"`` gives {"pq": ..., "qp": ...}.

        ``version`` pins the network (see ``models()``); a version not served raises ApiError with status 409.
        """
        body: dict[str, Any] = {
            "y": y,
            "objective": objective,
            "num_samples": num_samples,
            "resample": resample,
            "cross_check": cross_check,
        }
        if seed is not None:
            body["seed"] = seed
        if version is not None:
            body["version"] = version
        answer = self._call("POST", f"/v1/models/{model}/posterior", json=body)
        return [parse(r) for r in answer["results"]] if "results" in answer else parse(answer)
