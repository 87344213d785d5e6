"""Is the per-query verdict right? false_reliable and false_alarm over models, objectives, sample sizes, y and seeds.

An answer is *wrong* when its importance estimates miss the exact posterior
beyond their own error bars:

    |log_evidence - log p(y)| > 4 log_evidence_se + 0.05, or
    |posterior_mean_x - E[x | y]| > 4 std(x | y) / sqrt(ess) + 0.05 std(x | y)

(a missing standard error counts as wrong for a ``reliable`` answer). The standard error is the delta-method
value sqrt(1/ESS - 1/N) computed here from the answer's ESS, so that the bar does not depend on where the service
withholds its own (it reports none where q's weights are unreliable by themselves).

- false_reliable: the share of wrong answers whose verdict is ``reliable``;
- false_alarm: the share of right answers with num_samples >= 100, from the
  families that contain the posterior (gaussian, gmm_discrete, gmm_open), whose
  verdict is ``unreliable``.

The exact values come from each model's closed form
(``exact_posterior_and_evidence``), not from the answer. Answers come from the
service's own answering code, in process, with the committed artifacts.

    .venv/bin/python bench/verdict_calibration.py [--seeds 10] [--observations 5] [--artifacts artifacts]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.answers import PosteriorQuery, answer
from service.registry import Registry  # noqa: E402
from service.settings import Settings  # noqa: E402

SAMPLE_SIZES = (1, 2, 3, 5, 10, 30, 100, 1000)
CONTAINING = ("gaussian", "gmm_discrete", "gmm_open")
DEFAULTS = ("gaussian", "gmm", "gmm_discrete", "gmm_open")


def observations(served, count: int, seed: int) -> list[float]:
    """``count`` draws from p(y), then y = 0."""
    draws = served.model.sample_joint(count, torch.Generator().manual_seed(seed)).y.double().tolist()
    return [*draws, 0.0]


def is_wrong(result: dict, exact_log_z: float, exact_mean: float, exact_std: float) -> bool:
    d = result["diagnostics"]
    ess, n = d["ess"], d["num_samples"]
    if d["log_evidence"] is None or d["posterior_mean_x"] is None or not ess or n < 2:
        return True
    se = math.sqrt(max(1.0 / ess - 1.0 / n, 0.0))
    evidence_off = abs(d["log_evidence"] - exact_log_z) > 4 * se + 0.05
    mean_off = abs(d["posterior_mean_x"] - exact_mean) > 4 * exact_std / math.sqrt(ess) + 0.05 * exact_std
    return evidence_off or mean_off


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10, help="seeds per (model, objective, N, y)")
    parser.add_argument("--observations", type=int, default=5, help="observations from p(y) per model (y = 0 is added)")
    parser.add_argument("--artifacts", type=Path, default=Settings().artifacts_dir)
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SAMPLE_SIZES), help="num_samples values")
    parser.add_argument("--examples", type=int, default=5, help="print this many false-reliable answers")
    parser.add_argument(
        "--models",
        nargs="*",
        default=list(DEFAULTS),
        help="variants to answer (default: the four default models); 'all' for every served variant",
    )
    args = parser.parse_args()

    registry = Registry(args.artifacts)
    settings = Settings(artifacts_dir=args.artifacts)
    per_n: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    examples: list[str] = []
    started = time.perf_counter()
    chosen = {name: served for name, served in registry.models.items() if args.models == ["all"] or name in args.models}
    for name, served in sorted(chosen.items()):
        ys = observations(served, args.observations, seed=20261201)
        _, log_z = served.model.exact_posterior_and_evidence(np.array(ys))
        exact = served.model.exact_posterior(np.array(ys))
        means, stds = exact.mean_x(), exact.std_x()
        for objective in served.objectives:
            for n in args.sizes:
                for seed in range(args.seeds):
                    query = PosteriorQuery(
                        served,
                        ys,
                        objective,
                        n,
                        seed,
                        resample=False,
                        cross_check=True,
                        check_samples=settings.cross_check_samples,
                    )
                    # NaN -> null
                    as_json = orjson.loads(orjson.dumps(answer(query), option=orjson.OPT_SERIALIZE_NUMPY))
                    for i, result in enumerate(as_json):
                        wrong = is_wrong(result, float(log_z[i]), float(means[i]), float(stds[i]))
                        verdict = result["diagnostics"]["verdict"]
                        row = per_n[n]
                        row["answers"] += 1
                        row["reliable"] += verdict == "reliable"
                        row["right_reliable"] += verdict == "reliable" and not wrong
                        if wrong:
                            row["wrong"] += 1
                            if verdict == "reliable":
                                row["false_reliable"] += 1
                                if len(examples) < args.examples:
                                    d = result["diagnostics"]
                                    examples.append(
                                        f"{name}/{objective} y={ys[i]:.3f} N={n} seed={result['seed']}: log Z "
                                        f"{d['log_evidence']:.4f}"
                                        f" (exact {float(log_z[i]):.4f}, se {d['log_evidence_se']}), mean "
                                        f"{d['posterior_mean_x']:.3f}"
                                        f" (exact {float(means[i]):.3f}); {d['reason']}"
                                    )
                        elif n >= 100 and served.model.name in CONTAINING and served.model.family_contains_posterior:
                            row["right_checked"] += 1
                            row["false_alarm"] += verdict == "unreliable"
    elapsed = time.perf_counter() - started

    print(
        f"verdict calibration: {', '.join(sorted(chosen))}, {args.seeds} seeds, {args.observations} + 1 observations "
        f"per model, cross-check budget {settings.cross_check_samples} draws ({elapsed:.0f} s)"
    )
    print(
        "| N | answers | called reliable | wrong | wrong called reliable | false_reliable | right (N>=100, exact "
        "family) | called unreliable | false_alarm |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    total: dict[str, int] = defaultdict(int)

    def share(part: int, whole: int) -> str:
        return f"{part / whole:.3f}" if whole else "-"

    for n in sorted(per_n):
        row = per_n[n]
        for key, value in row.items():
            total[key] += value
        print(
            f"| {n} | {row['answers']} | {row['reliable']} | {row['wrong']} | {row['false_reliable']} | "
            f"{share(row['false_reliable'], row['wrong'])} "
            f"| {row['right_checked']} | {row['false_alarm']} | {share(row['false_alarm'], row['right_checked'])} |"
        )
    print(
        f"| total | {total['answers']} | {total['reliable']} | {total['wrong']} | {total['false_reliable']} | "
        f"{share(total['false_reliable'], total['wrong'])} "
        f"| {total['right_checked']} | {total['false_alarm']} | {share(total['false_alarm'], total['right_checked'])} |"
    )
    for example in examples:
        print("false reliable:", example)


if __name__ == "__main__":
    main()
