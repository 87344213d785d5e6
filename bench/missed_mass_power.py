"""How small a missed mode does the cross-check catch? Its detection rate against the mass the mode holds.

On ``gmm`` the mode-seeking ``qp`` network sits on one mode of the bimodal
posterior; the exact posterior says how much mass the other mode holds. For y
on a grid (so that the missed mass runs from under 1% to 50%), each seed
answers with the ``qp`` network, cross-checked against ``pq`` with the
service's default budget, and the table gives per missed-mass band how often
the answer is flagged (``misses_mass``, verdict unreliable) and how often it is
not called reliable. ``--num-samples`` is the caller's N: the check draws
max(N, its budget) of each network, so the rate should not depend on it.

    .venv/bin/python bench/missed_mass_power.py [--seeds 40] [--num-samples 100]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.answers import PosteriorQuery, answer
from service.registry import Registry  # noqa: E402
from service.settings import Settings  # noqa: E402

BANDS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--num-samples", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--artifacts", type=Path, default=Settings().artifacts_dir)
    args = parser.parse_args()
    settings = Settings(artifacts_dir=args.artifacts)
    served = Registry(args.artifacts).models["gmm"]
    y = np.concatenate([np.linspace(-60.0, -3.0, 58), np.linspace(3.0, 60.0, 58)])
    exact = served.model.exact_posterior(y)
    q = served.forward(["qp"], y[None])["qp"].flatten()
    # the mode q misses: the component whose posterior mean is farther from q's mean
    far = np.abs(exact.means - q.means) > np.abs(exact.means[:, ::-1] - q.means)
    missed = (exact.probs * far).sum(-1)
    for n in args.num_samples:
        counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for seed in range(args.seeds):
            query = PosteriorQuery(served, y.tolist(), "qp", n, seed, False, True, settings.cross_check_samples)
            for mass, result in zip(missed, answer(query)):
                band = int(np.searchsorted(BANDS, mass, side="right")) - 1
                d = result["diagnostics"]
                counts[band]["answers"] += 1
                counts[band]["flagged"] += bool(d["cross_check"]["misses_mass"])
                counts[band]["not_reliable"] += d["verdict"] != "reliable"
        print(
            f"\nqp network on gmm, caller's num_samples {n}, cross-check budget {settings.cross_check_samples} draws "
            "of each network, "
            f"{args.seeds} seeds"
        )
        print("| missed mass | answers | flagged misses_mass | not called reliable |")
        print("|---|---|---|---|")
        for band in sorted(counts):
            row = counts[band]
            upper = f"{BANDS[band + 1]:.1%}" if band + 1 < len(BANDS) else "100%"
            print(
                f"| {BANDS[band]:.1%} - {upper} | {row['answers']} | {row['flagged'] / row['answers']:.2f} "
                f"| {row['not_reliable'] / row['answers']:.2f} |"
            )


if __name__ == "__main__":
    main()
