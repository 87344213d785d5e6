"""Print the serve acceptance figures through HTTP (in-process TestClient).

Computed as tests/test_service.py asserts them.

Run: .venv/bin/python bench/service_figures.py
"""

from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient
from scipy import stats

from amortized.evaluation import best_in_family, kl_divergences
from service.main import create_app
from service.settings import Settings

app = create_app(Settings(artifacts_dir=Path("artifacts")))
# every committed variant (the defaults and examples/variants/) at the observation tests/test_service.py checks it at
Y = {"gaussian": 0.8, "gmm": 6.0, "gmm_discrete": -3.0, "gmm_open": 2.7, "gmm_sigma5": 3.0, "gmm_open_k3": 2.7}
with TestClient(app) as client:
    for model in Y:
        for objective in ["pq", "qp"]:
            y = Y[model]
            d = client.post(
                f"/v1/models/{model}/posterior", json={"y": y, "objective": objective, "num_samples": 5000, "seed": 11}
            ).json()
            net = app.state.registry.models[model].artifacts[objective].network
            with torch.no_grad():
                q = net(torch.tensor([y]))
            br = d["q"]["branches"]
            probs, means, stds = (np.array([b[k] for b in br]) for k in ("probability", "mean", "std"))
            qdiff = max(
                np.max(np.abs(means - q.means[0].numpy()) / np.abs(q.means[0].numpy())),
                np.max(np.abs(stds - q.stds[0].numpy()) / q.stds[0].numpy()),
            )
            p = stats.kstest(
                np.array(d["samples"]["x"]),
                lambda v, probs=probs, means=means, stds=stds: (
                    probs * stats.norm.cdf(np.asarray(v)[..., None], means, stds)
                ).sum(-1),
            ).pvalue
            g, e = d["diagnostics"], d["exact"]
            # no standard error where q's own weights are unreliable (null): no z then
            z = (g["log_evidence"] - e["log_evidence"]) / g["log_evidence_se"] if g["log_evidence_se"] else np.nan
            cc = g["cross_check"]
            zm = (cc["log_evidence_mixture"] - e["log_evidence"]) / cc["log_evidence_mixture_se"]
            m = app.state.registry.models[model].model
            yt = torch.tensor([y], dtype=torch.float64)
            limit = (
                0.0
                if m.family_contains_posterior
                else kl_divergences(m, m.exact_posterior(yt), best_in_family(m, yt, objective))[
                    objective == "qp"
                ].item()
            )
            print(
                f"{model:13s} {objective} y={y:5}: q rel diff {qdiff:.1e}  KS p {p:.3f}  z {z:+.2f}  mixture z "
                f"{zm:+.2f}  ESS/N {g['ess_fraction']:.4f}  k-hat {g['pareto_k']}  verdict {g['verdict']}  misses_mass "
                f"{cc['misses_mass']}  kl_{objective} {e['kl_' + objective]:.4f} (best in family {limit:.4f})"
            )
    both = client.post(
        "/v1/models/gmm/posterior", json={"y": 0.0, "objective": "both", "num_samples": 1000, "seed": 3}
    ).json()["objectives"]
    for o in ("pq", "qp"):
        g = both[o]["diagnostics"]
        print(
            f"gmm y=0 {o}: std {both[o]['q']['branches'][0]['std']:.3f}  ESS/N {g['ess_fraction']:.3f}  logZ "
            f"{g['log_evidence']:.3f} vs exact {both[o]['exact']['log_evidence']:.3f}  verdict {g['verdict']}"
        )
