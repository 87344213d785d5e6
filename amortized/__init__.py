"""The science of amortized inference, free of HTTP and command lines.

Every posterior here, exact or approximate, is a :class:`BranchedNormal`: a
categorical over discrete branches with a normal on the continuous latent x in
each. Models (:mod:`amortized.models`) know their joint and exact posterior;
networks (:mod:`amortized.networks`) map y to an approximate one; losses,
evaluation, importance diagnostics and artifacts build on those two.

The numerical core is written once for two array libraries (see
:mod:`amortized.arrays`): torch where training needs gradients, NumPy on the
request path, where an answer is a few hundred operations on small arrays and
torch's fixed cost per call would dominate.
"""

from amortized.distributions import BranchedNormal

__all__ = ["BranchedNormal"]
__version__ = "0.1.0"
