"""The pages, their assets and the exact-posterior endpoint over HTTP (in-process).

The browser tests are test_browser.py.
"""

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from amortized.models import build_model

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "service" / "static" / "vendor"
URL_ATTRIBUTE = re.compile(r'(?:src|href)\s*=\s*["\']([^"\']+)["\']')


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return struct.unpack(">II", data[16:24])


def local_only(html: str) -> list[str]:
    """The page's src/href URLs that would leave the host (absolute URLs to anywhere)."""
    return [url for url in URL_ATTRIBUTE.findall(html) if re.match(r"^[a-z]+://|^//", url)]


def test_landing_page_lists_models_losses_and_metrics(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    html = response.text
    for name in ("gaussian", "gmm", "gmm_discrete", "gmm_open"):
        manifest = client.get(f"/v1/models/{name}").json()["artifacts"]["qp"]
        assert f'id="model-{name}"' in html and f"{manifest['metrics']['kl_qp']:.5f}" in html
        assert f"/explore?model={name}" in html
    for href in ("/docs", "/redoc", "/explore", "/metrics"):
        assert f'href="{href}"' in html
    assert local_only(html) == []


def test_explore_page_loads_only_local_assets(client):
    response = client.get("/explore")
    html = response.text
    assert response.status_code == 200 and local_only(html) == []
    config = json.loads(
        re.search(r'<script type="application/json" id="explorer-config">(.*?)</script>', html, re.S).group(1)
    )
    assert config["y_ranges"]["gmm"][0] < -30 and config["y_ranges"]["gmm"][1] > 30  # p(y) of gmm has std ~11
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        assert client.get(asset).status_code == 200, asset


def test_docs_serve_swagger_ui_and_redoc_from_the_app(client):
    for path in ("/docs", "/redoc"):
        html = client.get(path).text
        assert local_only(html) == [], path
        for asset in re.findall(r'(?:src|href)="(/[^"]+)"', html):
            assert client.get(asset).status_code == 200, asset
    assert b"cdn.redoc.ly" not in client.get("/redoc/redoc.standalone.js").content  # its logo, the one outside request


def test_vendored_uplot_is_the_locked_version_with_its_licence():
    lock = json.loads((VENDOR / "package-lock.json").read_text())
    version = lock["packages"]["node_modules/uplot"]["version"]
    assert json.loads((VENDOR / "package.json").read_text())["dependencies"]["uplot"] == version
    assert (
        (VENDOR / "uplot" / "uPlot.iife.min.js")
        .read_text()
        .startswith(f"/*! https://github.com/leeoniya/uPlot (v{version}) */")
    )
    assert "MIT License" in (VENDOR / "uplot" / "LICENSE").read_text()


def test_exact_components_at_one_or_many_y(client):
    model = build_model("gmm")
    ys = [-3.0, 0.0, 1e6]
    response = client.get("/v1/models/gmm/exact", params={"y": ys})
    assert response.status_code == 200
    body = response.json()
    posterior, log_evidence = model.exact_posterior_and_evidence(np.array(ys))
    assert body["model"] == "gmm" and [r["y"] for r in body["results"]] == ys
    for i, result in enumerate(body["results"]):
        assert result["log_evidence"] == pytest.approx(log_evidence[i], rel=1e-12)
        assert [c["mean"] for c in result["components"]] == pytest.approx(posterior.means[i].tolist(), rel=1e-12)
        assert [c["probability"] for c in result["components"]] == pytest.approx(
            posterior.probs[i].tolist(), rel=1e-12, abs=1e-300
        )
        assert result["branch_probabilities"] == pytest.approx([1.0])
    one = client.get("/v1/models/gmm_open/exact", params={"y": 2.5}).json()["results"][0]
    assert [c["latents"] for c in one["components"]] == [{"k": 1}, {"k": 2, "z": 0}, {"k": 2, "z": 1}]
    assert sum(one["branch_probabilities"]) == pytest.approx(1.0)


def test_exact_refuses_what_it_cannot_answer(client):
    assert client.get("/v1/models/gmm/exact").status_code == 422
    assert client.get("/v1/models/gmm/exact", params={"y": "nan"}).status_code == 422
    assert client.get("/v1/models/gmm/exact", params={"y": 2e9}).status_code == 422
    assert client.get("/v1/models/gmm/exact", params={"y": [0.0] * 1002}).status_code == 422
    missing = client.get("/v1/models/nope/exact", params={"y": 0})
    assert missing.status_code == 404 and "gmm" in missing.json()["detail"][0]["msg"]


def test_png_size_and_objective_options(client):
    default = client.get("/v1/models/gmm_open/posterior.png", params={"y": 0})
    assert png_size(default.content) == (640, 750)
    assert png_size(client.get("/v1/models/gmm/posterior.png", params={"y": 0}).content) == (640, 430)
    small = client.get(
        "/v1/models/gmm/posterior.png", params={"y": 1e6, "width": 400, "height": 300, "objective": "qp"}
    )
    assert small.status_code == 200 and png_size(small.content) == (400, 300)
    assert png_size(client.get("/v1/models/gmm/posterior.png", params={"y": 0, "width": 1000}).content) == (1000, 430)
    assert client.get("/v1/models/gmm/posterior.png", params={"y": 0, "width": 100}).status_code == 422
    assert client.get("/v1/models/gmm/posterior.png", params={"y": 0, "objective": "kl"}).status_code == 422
