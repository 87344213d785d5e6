"""Pages for people: ``GET /`` (what this is, what it serves, where to go) and ``GET /explore`` (the live explorer).

Everything a page loads is served by this app: the pages' own script and
style from ``service/static/``, the chart library (uPlot) from
``service/static/vendor/`` (vendored from npm, see ``vendor/update.sh``), and
the docs' Swagger UI and ReDoc from the fastapi-offline package. A
Content-Security-Policy tells the browser to load nothing from anywhere else.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from html import escape
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.registry import Registry, ServedModel

STATIC = Path(__file__).resolve().parent.parent / "static"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'"
)
DOCS_STATIC = Path(fastapi_offline.__file__).resolve().parent / "static"
# ReDoc 2 renders Redocly's logo from their CDN in its sidebar footer, with no option to turn it off:
# the one outside request of the docs. Served with that URL pointing at an empty inline image instead.
REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
EMPTY_IMAGE = b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"
LOSSES = {"pq": "forward KL (inference compilation): mass-covering", "qp": "reverse KL (negative ELBO): mode-seeking"}

router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    """The two pages, ReDoc, and their static files (Swagger UI's /docs is fastapi-offline's own)."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def page(body: str) -> HTMLResponse:
    return HTMLResponse(body, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})


def nice_bound(value: float) -> float:
    """Round a slider bound away from zero to one or two significant digits (43.7 -> 45)."""
    if value == 0:
        return 0.0
    step = 10 ** math.floor(math.log10(abs(value))) / 2
    return math.copysign(math.ceil(abs(value) / step) * step, value)


def y_range(served: ServedModel) -> list[float]:
    """The slider's range: four standard deviations of p(y) either side of its mean."""
    model = served.model
    return [nice_bound(model.y_loc - 4 * model.y_scale), nice_bound(model.y_loc + 4 * model.y_scale)]


def fmt(value: object, digits: int = 5) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else "–"


def loss_rows(served: ServedModel) -> str:
    rows = []
    for objective, artifact in sorted(served.artifacts.items()):
        manifest = artifact.manifest
        metrics = manifest.metrics
        stds = metrics.get("at_y0", {}).get("q", {}).get("stds", [])
        rows.append(
            "<tr>"
            f"<th scope='row'><code>{escape(objective)}</code></th>"
            f"<td>{escape(LOSSES.get(objective, ''))}</td>"
            f"<td>{fmt(metrics.get('kl_pq'))}</td><td>{fmt(metrics.get('kl_qp'))}</td>"
            f"<td>{fmt(metrics.get(f'limit_{objective}'))}</td><td>{fmt(metrics.get('amortisation_gap'))}</td>"
            f"<td>{escape(', '.join(f'{s:.3f}' for s in stds))}</td>"
            f"<td>{manifest.training.total_steps}</td>"
            f"<td>{fmt(manifest.training_result.get('seconds'), 1)}</td>"
            f"<td><code title='{escape(manifest.weights.sha256)}'>{escape(manifest.weights.sha256[:12])}</code></td>"
            "</tr>"
        )
    return "".join(rows)


def model_section(served: ServedModel) -> str:
    model = served.model
    name = escape(served.name)
    latents = ", ".join(model.latent_names) or "none"
    both = "both" if len(served.objectives) == 2 else served.objectives[0]
    family = "" if served.name == model.name else f" · a variant of <code>{escape(model.name)}</code>"
    params = escape(json.dumps(model.params.model_dump(), separators=(", ", ": ")))
    return f"""
<section class="model" id="model-{name}">
  <h3>{escape(model.title)} <code>{name}</code></h3>
  <p>{escape(model.description)}</p>
  <p class="facts">Discrete latents: {escape(latents)} · posterior branches: {model.num_branches}
     · compiled losses: {escape(", ".join(served.objectives))}{family}</p>
  <p class="facts">Parameters: <code>{params}</code></p>
  <table class="metrics">
    <caption>Quality on the fixed test set (1000 y from p(y)), from the artifacts' manifests</caption>
    <thead><tr><th scope="col">loss</th><th scope="col">what it is</th><th scope="col">KL(p‖q)</th><th scope="col">KL(q‖p)</th>
      <th scope="col">best in family</th><th scope="col">gap</th><th scope="col">q std at y = 0</th><th scope="col">steps</th>
      <th scope="col">trained (s)</th><th scope="col">weights sha256</th></tr></thead>
    <tbody>{loss_rows(served)}</tbody>
  </table>
  <p class="links"><a href="/explore?model={name}&amp;objective={both}&amp;y=0">Explore {name}</a>
    · <a href="/v1/models/{name}/posterior.png?y=0">figure at y = 0 (PNG)</a>
    · <a href="/v1/models/{name}">manifests (JSON)</a></p>
</section>"""  # noqa: E501  # HTML served as written: wrapping its lines would change the page's bytes


def landing(registry: Registry) -> str:
    sections = (
        "".join(model_section(served) for served in registry.models.values()) or "<p>No artifact is being served.</p>"
    )
    refused = ""
    if registry.refused:
        items = "".join(
            f"<li><code>{escape(path)}</code>: {escape(reason)}</li>" for path, reason in registry.refused.items()
        )
        refused = f"<section><h2>Refused artifacts</h2><ul>{items}</ul></section>"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Amortized inference service</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/site.css">
</head>
<body>
<header><h1>Amortized inference as a service</h1>
<nav aria-label="main"><a href="/explore">Explorer</a> <a href="/docs">API docs (Swagger UI)</a> <a href="/redoc">API reference (ReDoc)</a>
  <a href="/openapi.json">OpenAPI JSON</a> <a href="/metrics">Metrics (Prometheus)</a> <a href="/health/ready">Readiness</a></nav>
</header>
<main>
<section class="intro">
<p>Compiled inference networks q(x | y) answer “here is my observation y, what is the posterior?” in milliseconds,
with samples and importance-weighted diagnostics of how far to trust them. Each model has an exact posterior, so every
answer also carries the truth to compare with.</p>
<p>Each model is compiled with two losses: <strong>pq</strong>, the forward KL (mass-covering: q spreads over every mode)
and <strong>qp</strong>, the reverse KL or negative ELBO (mode-seeking: q may settle on one mode). The
<a href="/explore?model=gmm&amp;objective=both&amp;y=0">explorer</a> draws both against the exact posterior as y moves.</p>
<pre><code>curl -s {escape("http://<host>/v1/models/gmm/posterior")} -H 'content-type: application/json' \\
     -d '{{"y": 0.0, "objective": "both", "num_samples": 1000, "seed": 7}}'</code></pre>
</section>
<section><h2>Served models</h2>{sections}</section>
{refused}
</main>
</body>
</html>"""  # noqa: E501  # HTML served as written: wrapping its lines would change the page's bytes


@router.get("/", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    return page(landing(request.app.state.registry))


@lru_cache(maxsize=1)
def explore_template() -> str:
    return (STATIC / "explore.html").read_text(encoding="utf-8")


@router.get("/explore", response_class=HTMLResponse)
def explore(request: Request) -> HTMLResponse:
    registry: Registry = request.app.state.registry
    config = {"y_ranges": {name: y_range(served) for name, served in registry.models.items()}}
    text = json.dumps(config).replace("</", "<\\/")
    return page(explore_template().replace("{{CONFIG}}", text))


@lru_cache(maxsize=1)
def redoc_script() -> bytes:
    return (DOCS_STATIC / "redoc.standalone.js").read_bytes().replace(REDOC_LOGO, EMPTY_IMAGE)


@router.get("/redoc", response_class=HTMLResponse)
def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}/redoc/redoc.standalone.js",
        redoc_favicon_url=f"{root}/static/docs/favicon.png",
        with_google_fonts=False,
    )


@router.get("/redoc/redoc.standalone.js")
def redoc_js() -> Response:
    return Response(redoc_script(), media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})
