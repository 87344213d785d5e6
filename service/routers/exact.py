"""The exact posterior's components at y: what the explorer draws q against.

``POST /v1/models/{model}/posterior`` answers the exact posterior's moments and
discrete probabilities; its density of x needs every conjugate component
(for gmm, two components within the one branch). This endpoint gives them,
for one y or a sweep of them, from ``model.exact_posterior_and_evidence``.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from service.dependencies import QUERY_ERRORS, KnownQueryModelDep
from service.responses import json_response
from service.schemas import ErrorResponse, QueryY

# its one route names a model: the query string is checked with it (KnownQueryModelDep)
router = APIRouter(prefix="/v1/models", tags=["exact posterior"], responses=QUERY_ERRORS)

MAX_OBSERVATIONS = 1001  # the explorer's sweep over y asks for 201


class ExactComponent(BaseModel):
    branch: int = Field(..., description="index of the component's branch in the model's `branches`")
    latents: dict[str, int] = Field(..., description="the discrete latents of that branch; empty if none")
    probability: float = Field(..., description="p(component | y)")
    mean: float = Field(..., description="mean of the normal p(x | y, component)")
    std: float = Field(..., description="standard deviation of p(x | y, component)")


class ExactAtY(BaseModel):
    y: float = Field(..., description="the observation")
    log_evidence: float = Field(..., description="exact log p(y)")
    branch_probabilities: list[float] = Field(..., description="p(branch | y), in the order of the model's `branches`")
    components: list[ExactComponent] = Field(
        ..., description="p(x | y) = sum over components of probability x N(mean, std^2)"
    )


class ExactResponse(BaseModel):
    model: str = Field(..., description="the model answered for")
    results: list[ExactAtY] = Field(..., description="one entry per y, in the query's order")


Observations = Annotated[
    list[QueryY],
    Query(
        min_length=1,
        max_length=MAX_OBSERVATIONS,
        description="observation(s): repeat the parameter for a sweep, e.g. ?y=-1&y=0&y=1",
        examples=[[0.0]],
    ),
]


@router.get(
    "/{model}/exact",
    response_model=ExactResponse,
    responses={404: {"model": ErrorResponse}},
    summary="The exact posterior at y as its conjugate components (the density of x), with log p(y)",
)
def exact(served: KnownQueryModelDep, y: Observations) -> Response:
    model = served.model
    posterior, log_evidence = model.exact_posterior_and_evidence(np.asarray(y, dtype=np.float64))
    probs = posterior.probs
    branch_probs = model.branch_probabilities(posterior)
    branch_of = model.component_branch.tolist()
    results = [
        {
            "y": value,
            "log_evidence": log_evidence[i],
            "branch_probabilities": branch_probs[i],
            "components": [
                {
                    "branch": b,
                    "latents": served.branch_latents[b],
                    "probability": probs[i, c],
                    "mean": posterior.means[i, c],
                    "std": posterior.stds[i, c],
                }
                for c, b in enumerate(branch_of)
            ],
        }
        for i, value in enumerate(y)
    ]
    return json_response({"model": served.name, "results": results})
