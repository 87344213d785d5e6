"""Importance sampling on the request path: NumPy and compiled loops only, no torch.

One idea per module (as Pyro's ``infer/importance.py`` and ``ops/stats.py``):

- :mod:`~amortized.importance.noise`: log densities at a proposal's draws as
  quadratics in the draw's noise (the proposal's own, another's, the model's joint);
- :mod:`~amortized.importance.kernels`: the per-draw loops, compiled with numba;
- :mod:`~amortized.importance.weighing`: draws, importance weights, evidence,
  standard error, ESS, ELBO, and the defensive mixture of two proposals;
- :mod:`~amortized.importance.psis`: PSIS k-hat and the sample size it needs
  (Vehtari et al.; Zhang and Stephens);
- :mod:`~amortized.importance.streams`: per-observation random streams, the
  rule that keeps an answer's bytes the same alone or in any batch.

:mod:`amortized.diagnostics` orchestrates them into a verdict; the training
side never imports this package.
"""
