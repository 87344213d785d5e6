"""What is served: every variant, its family, parameters and versions, and each compiled artifact's manifest."""

from fastapi import APIRouter, Depends

from service.dependencies import QUERY_ERRORS, RegistryDep, ServedModelDep, known_query
from service.registry import ServedModel
from service.schemas import ErrorResponse, ModelDetail, ModelSummary

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(known_query)], responses=QUERY_ERRORS)


def summary(served: ServedModel) -> dict:
    return {
        **served.model.describe(),
        "name": served.name,
        "family": served.family,
        "objectives": served.objectives,
        "versions": served.versions,
    }


@router.get(
    "",
    response_model=list[ModelSummary],
    summary="Every served variant: family, parameters, compiled losses and their versions",
)
def list_models(registry: RegistryDep) -> list[dict]:
    return [summary(served) for served in registry.models.values()]


@router.get(
    "/{model}",
    response_model=ModelDetail,
    summary="One variant in full, with its artifacts' manifests",
    description="Manifests carry the training settings, the weights' sha256 and the evaluation metrics "
    "(for gaussian, metrics.linear gives the learned a, b, c beside a*, b*, c*).",
    responses={404: {"model": ErrorResponse}},
)
def get_model(served: ServedModelDep) -> dict:
    manifests = {name: artifact.manifest.model_dump(mode="json") for name, artifact in served.artifacts.items()}
    return {**summary(served), "artifacts": manifests}
