"""deploy/kubernetes/: valid against the Kubernetes schemas (kubernetes-validate ships them), and in step with the app.

Nothing here runs a cluster: the manifests are validated, and what they name
(routes, settings, the launcher, the artifacts folder) is checked against the code.
"""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.main import create_app
from service.settings import Settings
from tests.conftest import ARTIFACTS

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [
    doc
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
    for doc in yaml.safe_load_all(path.read_text())
    if doc
]
BY_KIND = {doc["kind"]: doc for doc in DOCUMENTS}
# the oldest release still maintained by the clouds here, and the newest
VERSIONS = [
    "1.29.0",
    kubernetes_validate.latest_version(),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("doc", DOCUMENTS, ids=[f"{d['kind']}/{d['metadata']['name']}" for d in DOCUMENTS])
def test_manifest_is_valid_against_the_kubernetes_schema(doc, version):
    kubernetes_validate.validate(doc, version, strict=True)  # strict: an unknown or misspelled field fails too


def test_every_kind_the_deployment_needs_is_there():
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "Job",
        "PodDisruptionBudget",
    } <= set(BY_KIND)


def pod_spec(kind: str) -> dict:
    return BY_KIND[kind]["spec"]["template"]["spec"]


def test_api_pods_probe_real_routes_and_request_resources():
    app = create_app(Settings(artifacts_dir=ARTIFACTS))
    paths = set(app.openapi()["paths"])
    (api,) = pod_spec("Deployment")["containers"]
    assert api["command"][:3] == ["python", "-m", "service"]
    port = {p["name"]: p["containerPort"] for p in api["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["path"] in paths and api[probe]["httpGet"]["port"] in port
    assert (
        api["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        and api["livenessProbe"]["httpGet"]["path"] == "/health/live"
    )
    assert {"cpu", "memory"} <= set(api["resources"]["requests"]) and "memory" in api["resources"]["limits"]
    env = {e["name"]: e["value"] for e in api["env"]}
    settings = {f"AMORTIZED_{field.upper()}" for field in Settings.model_fields}
    assert {name for name in env if name.startswith("AMORTIZED_")} <= settings
    assert env["WEB_CONCURRENCY"] == "1"
    mounts = {m["mountPath"]: m for m in api["volumeMounts"]}
    assert mounts[env["AMORTIZED_ARTIFACTS_DIR"]]["readOnly"] and env["PROMETHEUS_MULTIPROC_DIR"] in mounts
    # the root file system is read-only: the image's numba cache is used from a copy in a writable /tmp
    assert api["securityContext"]["readOnlyRootFilesystem"] and not mounts["/tmp"].get("readOnly")
    assert "NUMBA_CACHE_DIR" not in env  # the image's own (Dockerfile), built at image build time


def test_artifacts_come_from_the_volume_the_compile_job_writes():
    claim = BY_KIND["PersistentVolumeClaim"]["metadata"]["name"]
    for kind in ("Deployment", "Job"):
        volumes = {v["name"]: v for v in pod_spec(kind)["volumes"]}
        assert any(v.get("persistentVolumeClaim", {}).get("claimName") == claim for v in volumes.values()), kind
    (trainer,) = pod_spec("Job")["containers"]
    assert trainer["command"][:5] == ["python", "-m", "trainer", "compile", "--all"]
    assert trainer["command"][trainer["command"].index("--out") + 1] == "/artifacts"
    (wait,) = pod_spec("Deployment")["initContainers"]
    assert "discover_artifacts" in wait["command"][-1]
    compile(wait["command"][-1], "init", "exec")  # the init container's script is Python that compiles


def test_service_and_autoscaler_point_at_the_api_pods():
    deployment, service, hpa, pdb = (
        BY_KIND[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget")
    )
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert (
        service["spec"]["selector"].items() <= labels.items()
        and pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    )
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and hpa["spec"]["minReplicas"] >= 2


def test_the_validation_is_strict_enough_to_catch_a_typo():
    deployment = yaml.safe_load(yaml.safe_dump(BY_KIND["Deployment"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {
        "httpGet": {"path": "/health/ready", "port": "http"}
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)
