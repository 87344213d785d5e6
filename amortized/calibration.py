"""Calibration of a compiled network over the population of observations: coverage and SBC.

A network is *calibrated* when its credible statements hold as often as they
claim, over observations y drawn from the model, p(y). Two checks, in the
manner of sbi's and BayesFlow's diagnostics, computed here exactly where the
model allows (every model of this project has its posterior in closed form):

- **Expected coverage of central credible intervals.** For each test
  observation y, the central interval of level a of q's marginal q(x | y)
  (the (1 - a)/2 and (1 + a)/2 quantiles, branches summed out) holds the true
  x with probability P_p(x in I_a(y) | y), the exact posterior's mass on it.
  Averaged over y from p(y) this is the probability that the interval holds
  the x of a fresh joint draw (x, y), i.e. the expected coverage of sbi's
  ``expected_coverage`` test, here without the Monte Carlo noise of drawing
  x. A calibrated q gives a for every level a; below a is overconfident.
  The same is computed for the service's importance-resampled answer (SIR
  with the default 1000 draws and the request path's own weights; a test
  holds it to :func:`amortized.diagnostics.analyse`'s resampled draws): its
  interval is the empirical central interval of the resampled draws.
- **Simulation-based calibration** (Talts, Betancourt, Simpson, Vehtari &
  Gelman 2018, "Validating Bayesian inference algorithms with simulation-based
  calibration", arXiv:1804.06788): for joint draws (x*, y), the rank of x*
  among L draws of q(x | y) is uniform on {0, ..., L} for every y exactly when
  q(x | y) = p(x | y) (averaged over p(y)). Ranks are binned into B equal bins
  (Talts et al., sec. 4.1) and tested for uniformity by Pearson's chi-square
  (statistic and p-value, B - 1 degrees of freedom). A U-shaped histogram is
  an overconfident q, a hump an underconfident one.

Everything is vectorised over observations, levels and draws (torch float64
for the closed forms; NumPy where the request path's own code is called).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from amortized.arrays import logsumexp
from amortized.distributions import BranchedNormal, inverse_cdf
from amortized.importance.noise import joint_log_prob, proposal_log_prob
from amortized.models import ConjugateMixtureModel, JointSample
from amortized.networks import InferenceNetwork
from amortized.summaries import central_bounds
from amortized.summaries import mixture_quantiles as quantiles_of

LEVELS = (0.5, 0.8, 0.95)
RESAMPLED_NUM_SAMPLES = 1000  # the service's default num_samples
SBC_DRAWS = 99  # L draws of q per simulation: ranks 0..99, 100 values
SBC_BINS = 20  # 5 ranks per bin: 50 expected counts per bin with 1000 simulations
SBC_SEED = 18040678  # arXiv 1804.06788, Talts et al.
RESAMPLE_SEED = 20180411


def _tensor(array) -> Tensor:
    return (
        array.detach().to(torch.float64)
        if isinstance(array, Tensor)
        else torch.as_tensor(np.asarray(array), dtype=torch.float64)
    )


def mixture_cdf(dist: BranchedNormal, x: Tensor) -> Tensor:
    """P(X <= x) under the x-marginal of ``dist`` (branches summed), for x of shape ``(batch, points)``."""
    probs, means, stds = (_tensor(a) for a in (dist.probs, dist.means, dist.stds))
    z = (_tensor(x)[..., None] - means[:, None, :]) / stds[:, None, :]
    return (probs[:, None, :] * torch.special.ndtr(z)).sum(-1)


def mixture_quantiles(dist: BranchedNormal, levels: Sequence[float]) -> Tensor:
    """The ``levels``-quantiles of the x-marginal of ``dist``, ``(batch, len(levels))``, float64.

    :func:`amortized.summaries.mixture_quantiles` (the service's summaries use it too), as a tensor.
    """
    return torch.from_numpy(quantiles_of(dist.numpy(), levels))


def interval_coverage(exact: BranchedNormal, low: Tensor, high: Tensor) -> Tensor:
    """The exact posterior's mass on [low, high], per observation and interval ``(batch, intervals)``."""
    return mixture_cdf(exact, high) - mixture_cdf(exact, low)


def expected_coverage(exact: BranchedNormal, q: BranchedNormal, levels: Sequence[float] = LEVELS) -> list[float]:
    """For each level a: the mean over observations of the posterior mass on q's central a-interval."""
    bounds = mixture_quantiles(q, central_bounds(levels))
    n = len(levels)
    return interval_coverage(exact, bounds[:, :n], bounds[:, n:]).mean(0).tolist()


def importance_resample(
    model: ConjugateMixtureModel, y: np.ndarray, q: BranchedNormal, num_samples: int, generator: np.random.Generator
) -> np.ndarray:
    """SIR draws of x, ``(observations, num_samples)``: the service's ``"resample": true`` answer without its kernels.

    The same weights as :func:`amortized.importance.weighing.weigh` (the joint's
    noise quadratics of :mod:`amortized.importance.noise` less the proposal's own density, as quadratics in
    each draw's noise, summed over prior components in log space), evaluated
    with whole-array NumPy: nothing to compile in each compiler worker. Draws
    of q's branch by its CDF, x = mean + std * noise, then ``num_samples``
    draws resampled in proportion to the weights.
    """
    rows, width = q.means.shape
    table = (joint_log_prob(model, q, y) - proposal_log_prob(q)).table()  # (components, rows, branches, 3)
    branch = (
        inverse_cdf(q.probs, generator.random((rows, num_samples)))
        if width > 1
        else np.zeros((rows, num_samples), dtype=np.int64)
    )
    noise = generator.standard_normal((rows, num_samples))
    # (components, rows, draws or 1 with one branch: broadcast, not copied, 3)
    at = table[:, np.arange(rows)[:, None], branch] if width > 1 else table
    log_weights = logsumexp(at[..., 0] + noise * (at[..., 1] + at[..., 2] * noise), 0)
    weights = np.exp(log_weights - log_weights.max(-1, keepdims=True))
    x = np.take_along_axis(q.means, branch, -1) + np.take_along_axis(q.stds, branch, -1) * noise
    # the uniforms sorted within each row: the same picks, in increasing order (the resampled draws are the same
    # multiset, so every quantile of them is the same), and the sorted queries make the CDF search several times faster
    picks = inverse_cdf(weights, np.sort(generator.random((rows, num_samples)), -1))
    return np.take_along_axis(x, picks, -1)


def resampled_coverage(
    model: ConjugateMixtureModel,
    exact: BranchedNormal,
    y: np.ndarray,
    q: BranchedNormal,
    levels: Sequence[float] = LEVELS,
    num_samples: int = RESAMPLED_NUM_SAMPLES,
    seed: int = RESAMPLE_SEED,
) -> list[float]:
    """Expected coverage of the service's importance-resampled answer (``"resample": true``).

    ``num_samples`` draws of q (NumPy ``q``, as the request path computes it)
    for every observation, weighed and resampled (:func:`importance_resample`);
    the interval is the empirical central interval of the resampled draws.
    """
    draws = importance_resample(model, np.asarray(y, dtype=np.float64), q, num_samples, np.random.default_rng(seed))
    bounds = torch.from_numpy(np.quantile(draws, central_bounds(levels), axis=-1, method="linear").T.copy())
    n = len(levels)
    return interval_coverage(exact, bounds[:, :n], bounds[:, n:]).mean(0).tolist()


def sbc_ranks(q: BranchedNormal, x_true: Tensor, draws: int = SBC_DRAWS, seed: int = SBC_SEED) -> Tensor:
    """The rank of each true x among ``draws`` draws of q(x | y) of its observation: integers 0..draws."""
    generator = torch.Generator().manual_seed(seed)
    q = BranchedNormal(*(_tensor(a) for a in (q.log_probs, q.means, q.stds)))
    _, x = q.sample(draws, generator)
    return (x < _tensor(x_true)[:, None]).sum(-1)


def chi_square_uniformity(ranks: Tensor, values: int, bins: int) -> dict:
    """Pearson's chi-square test that ``ranks`` (integers 0..values-1) are uniform, on ``bins`` equal bins."""
    if values % bins:
        raise ValueError(f"{values} rank values do not split into {bins} equal bins")
    counts = torch.bincount(ranks * bins // values, minlength=bins).to(torch.float64)
    expected = len(ranks) / bins
    statistic = ((counts - expected) ** 2 / expected).sum()
    dof = bins - 1
    # chi2 survival function
    p_value = torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), statistic / 2)
    return {"statistic": statistic.item(), "dof": dof, "p_value": p_value.item(), "counts": counts.long().tolist()}


def sbc(q: BranchedNormal, x_true: Tensor, draws: int = SBC_DRAWS, bins: int = SBC_BINS, seed: int = SBC_SEED) -> dict:
    """SBC rank-uniformity test of q over the simulations (x_true, y) that ``q`` was computed for."""
    ranks = sbc_ranks(q, x_true, draws, seed)
    return {"simulations": len(ranks), "draws": draws, "bins": bins, **chi_square_uniformity(ranks, draws + 1, bins)}


METHOD = (
    "coverage: mean over the test set (y from p(y)) of the exact posterior mass on the central credible interval "
    "of q(x|y) (and of the importance-resampled answer's draws); sbc: ranks of the true x among draws of q(x|y) "
    "for joint draws (x, y), chi-square test of uniformity on equal bins"
)
SOURCE = (
    "Talts, Betancourt, Simpson, Vehtari & Gelman (2018), Validating Bayesian inference algorithms with "
    "simulation-based calibration, arXiv:1804.06788; expected coverage as in sbi's and BayesFlow's diagnostics"
)


def calibration(
    model: ConjugateMixtureModel,
    net: InferenceNetwork,
    simulations: JointSample | None = None,
    levels: Sequence[float] = LEVELS,
    num_samples: int = RESAMPLED_NUM_SAMPLES,
) -> dict:
    """Every calibration figure of one network: the manifest's ``metrics.calibration``.

    ``simulations``: joint draws (x, y); by default the evaluation's fixed test
    set (its y are :func:`amortized.evaluation.test_observations`), with their x.
    q is the network's torch answer; the importance-resampled answer uses the
    request path's NumPy forward and, for a mixture network, its view of the
    model (:mod:`amortized.mixture`).
    """
    from amortized.evaluation import TEST_SEED, TEST_SIZE
    from amortized.mixture import view_for

    if simulations is None:
        simulations = model.sample_joint(TEST_SIZE, torch.Generator().manual_seed(TEST_SEED))
    y = simulations.y.double()
    with torch.no_grad():
        q = net(y.float()).to(torch.float64)
    exact = model.exact_posterior(y)
    served = net.numpy()(y.numpy()[None]).flatten()  # the request path stacks queries: one stack of the whole set
    return {
        "method": METHOD,
        "source": SOURCE,
        "levels": list(levels),
        "coverage_q": expected_coverage(exact, q, levels),
        "coverage_resampled": resampled_coverage(
            view_for(model, getattr(net, "components", 1)), exact, y.numpy(), served, levels, num_samples
        ),
        "resampled_num_samples": num_samples,
        "sbc": sbc(q, simulations.x.double()),
    }
