"""How far a compile moves when its arithmetic rounds differently: the tolerance behind the README's determinism claim.

Another CPU (another instruction set for torch's kernels: AVX2 against
AVX-512, another summation order in a matrix product) changes results at the
last bit of float32. This measures what that does downstream, on one machine:
each compile is repeated from the same seed with the initial weights moved by
one unit in the last place of float32 (each weight times 1 +- 2^-24, the sign
drawn at random), and the weights, q's outputs on the test set and the
amortisation gap are compared with the unperturbed compile. The unperturbed
compile is also repeated, to show that it gives the same bytes.

    .venv/bin/python bench/determinism.py [--pairs gmm/qp gmm_open/qp ...] [--perturbations 4] [--seed 0]

With ``--seeds 0 1 2 3 4`` it compiles each pair once per seed instead and prints
each seed's amortisation gap, on the test set and on 100,000 fresh observations from
p(y), and its weights' digest (the README's seed table).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from amortized.evaluation import evaluate, test_observations  # noqa: E402
from amortized.losses import OBJECTIVES  # noqa: E402
from amortized.models import MODELS, build_model  # noqa: E402
from amortized.networks import build_network  # noqa: E402
from amortized.training import recipe, train  # noqa: E402
from trainer.cli import whole_at_least  # noqa: E402

PAIRS = [
    "gaussian/pq",
    "gaussian/qp",
    "gmm/pq",
    "gmm/qp",
    "gmm_discrete/pq",
    "gmm_discrete/qp",
    "gmm_open/pq",
    "gmm_open/qp",
]


FRESH_SEED = 424242  # the fresh test set's seed (evaluation's fixed test set has its own)
FRESH_CHUNK = 5_000  # observations evaluated at once (the mean of equal chunks' means is the whole set's mean)


def compile_once(pair: str, seed: int, perturbation: int | None, fresh: int = 0) -> dict:
    """One compile of ``pair``.

    ``perturbation`` k > 0 moves every initial weight by one float32 ulp (signs from seed k).
    ``fresh`` > 0: also the gap on that many fresh observations from p(y) (what another test set would give).
    """
    torch.set_num_threads(1)
    name, objective = pair.split("/")
    model = build_model(name)
    config = recipe(name, objective, seed=seed)
    torch.manual_seed(config.seed)
    net = build_network(model, None, config.family_options)
    if perturbation:
        signs = torch.Generator().manual_seed(perturbation)
        with torch.no_grad():
            for parameter in net.parameters():
                flip = torch.randint(0, 2, parameter.shape, generator=signs) * 2 - 1
                parameter.mul_(1 + flip * 2.0**-24)
    started = time.perf_counter()
    train(model, net, config)
    seconds = time.perf_counter() - started
    flat = torch.cat([p.detach().reshape(-1) for p in net.state_dict().values()])
    with torch.no_grad():
        q = net(test_observations(model).float())
    metrics = evaluate(model, net, objective)
    if fresh:
        y = model.sample_joint(fresh, torch.Generator().manual_seed(FRESH_SEED)).y.double()
        # in equal chunks: the quadrature's arrays for 100,000 y at once took gigabytes and minutes of page faults
        chunks = y.split(FRESH_CHUNK)
        assert all(len(chunk) == FRESH_CHUNK for chunk in chunks), "fresh must be a multiple of FRESH_CHUNK"
        gaps = [evaluate(model, net, objective, y=chunk)["amortisation_gap"] for chunk in chunks]
        metrics["fresh_gap"] = sum(gaps) / len(gaps)
    return {
        "pair": pair,
        "perturbation": perturbation,
        "sha256": hashlib.sha256(flat.numpy().tobytes()).hexdigest(),
        "weights": flat,
        "means": q.means.double(),
        "stds": q.stds.double(),
        "gap": metrics["amortisation_gap"],
        "fresh_gap": metrics.get("fresh_gap"),
        "seconds": seconds,
    }


FRESH = 100_000  # observations of the fresh test set in --seeds mode


def print_seeds(pairs: list[str], seeds: list[int], jobs: int) -> None:
    """Each pair compiled once per seed: its amortisation gap on the test set and its weights' digest."""
    runs = [(pair, seed, None, FRESH) for pair in pairs for seed in seeds]
    with ProcessPoolExecutor(jobs) as pool:
        results = list(pool.map(compile_once, *zip(*runs)))
    print(
        f"| pair | seed | gap on the test set (nats) | gap on {FRESH:,} fresh observations | weights sha256 (first 12) "
        "| training seconds |"
    )
    print("|---|---|---|---|---|---|")
    for (pair, seed, _, _), r in zip(runs, results, strict=True):
        print(f"| {pair} | {seed} | {r['gap']:.5f} | {r['fresh_gap']:.5f} | {r['sha256'][:12]} | {r['seconds']:.1f} |")
    for pair in pairs:
        gaps = [r["gap"] for (p, *_), r in zip(runs, results, strict=True) if p == pair]
        under = sum(g < 0.005 for g in gaps)
        print(f"{pair}: gaps {min(gaps):.5f} to {max(gaps):.5f}, {under} of {len(gaps)} under 0.005")


def pair_argument(text: str) -> str:
    """A pair "model/objective" of a default model and pq or qp (argparse's type)."""
    model, _, objective = text.partition("/")
    if model not in MODELS or objective not in OBJECTIVES:
        raise argparse.ArgumentTypeError(f"{text!r}: give model/objective, model one of {', '.join(MODELS)}, pq or qp")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", type=pair_argument, default=PAIRS)
    parser.add_argument("--perturbations", type=whole_at_least(0), default=4)
    parser.add_argument("--seed", type=whole_at_least(0), default=0)
    parser.add_argument("--jobs", type=whole_at_least(1), default=2)
    parser.add_argument(
        "--seeds", type=whole_at_least(0), nargs="+", help="compile each pair once per seed and print the gaps"
    )
    args = parser.parse_args()
    if args.seeds:
        print_seeds(args.pairs, args.seeds, args.jobs)
        return
    runs = [(pair, args.seed, k) for pair in args.pairs for k in [None, None, *range(1, args.perturbations + 1)]]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(compile_once, *zip(*runs)))
    print(
        "| pair | repeat: same bytes | gap (unperturbed) | gaps (one-ulp starts) | max abs weight change | max abs "
        "change of q's mean / std on the test set |"
    )
    print("|---|---|---|---|---|---|")
    for pair in args.pairs:
        rows = [r for r in results if r["pair"] == pair]
        base, again, perturbed = rows[0], rows[1], rows[2:]
        weights = max((r["weights"] - base["weights"]).abs().max().item() for r in perturbed)
        means = max((r["means"] - base["means"]).abs().max().item() for r in perturbed)
        stds = max((r["stds"] - base["stds"]).abs().max().item() for r in perturbed)
        gaps = ", ".join(f"{r['gap']:.5f}" for r in perturbed)
        same = "yes" if base["sha256"] == again["sha256"] else "NO"
        print(f"| {pair} | {same} | {base['gap']:.5f} | {gaps} | {weights:.2g} | {means:.2g} / {stds:.2g} |")


if __name__ == "__main__":
    main()
