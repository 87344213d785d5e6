"""Request and response bodies: the API contract, and what /docs shows.

Responses are built as plain dicts and serialised by orjson (see
``service.routers.posterior``); these models declare their shape for the
OpenAPI document and for the tests, which validate real responses against them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from amortized.inputs import quoted
from amortized.losses import OBJECTIVES, Objective

# Beyond +-1e9 an observation is astronomically far outside every model's p(y) (noise stds of 1 to 10),
# float32 networks and squared residuals stop meaning anything: refused with a 422 rather than answered.
MAX_ABS_Y = 1e9
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_ABS_Y, le=MAX_ABS_Y)]


# Numbers in a query string, decimal as a person or JSON writes them (".5", "+1" and "01" too): pydantic parses text
# with Python's float() and int(), which also take "1_0" (10), surrounding spaces and other scripts' digits
DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
WHOLE = re.compile(r"[+-]?[0-9]+")


def written_as(pattern: re.Pattern[str], what: str) -> BeforeValidator:
    """Refuses query text that is not ``pattern`` (ASCII digits, no spaces or underscores), naming ``what`` it is."""

    def check(value: object) -> object:
        if isinstance(value, str) and not pattern.fullmatch(value):
            # a "+" typed into a URL arrives as a space (application/x-www-form-urlencoded), "1e+5" as "1e 5": the
            # server cannot tell it from a space sent as %20, so the hint comes with every space
            plus = " (a + in a query string arrives as a space: write + as %2B)" if " " in value else ""
            raise ValueError(f"{quoted(value)} is not {what} (ASCII digits, no spaces or underscores){plus}")
        return value

    return BeforeValidator(check)


def finite_text(value: object) -> object:
    """Query text of a number beyond any float (``1e400``) is out of range, as the same number in a body is."""
    if isinstance(value, str) and DECIMAL.fullmatch(value) and abs(float(value)) == float("inf"):
        raise PydanticCustomError(
            "out_of_range", "out of range: {value} is beyond any float (about 1.8e308)", {"value": quoted(value)}
        )
    return value


# Query text's validators, placed after a number's bounds: Annotated[int, Field(ge=1, le=200), WHOLE_TEXT]. The
# bounds come first, on the number itself: given after the validators (Query(ge=...)), pydantic could not attach
# them to a number's schema, and the OpenAPI said "ge": -1e9 where JSON Schema says "minimum", so schema-driven
# clients (and fuzzers) sent values the route refuses. The validators run last to first: the text's form, then
# its size.
DECIMAL_TEXT = written_as(DECIMAL, "a decimal number such as -2.5 or 1e3")
FINITE_TEXT = BeforeValidator(finite_text)
WHOLE_TEXT = written_as(WHOLE, "a whole number")
QueryY = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_ABS_Y, le=MAX_ABS_Y), FINITE_TEXT, DECIMAL_TEXT]
# a network's version: the first 16 hex digits of its weights' sha256 (or all 64)
VERSION = re.compile(r"[0-9a-f]{16}(?:[0-9a-f]{48})?")


def version_form(value: str) -> str:
    """A version's form, said in words (pydantic's pattern error would quote the regular expression)."""
    if not VERSION.fullmatch(value):
        raise PydanticCustomError(
            "version_form",
            "{value} is not a network version: 16 lowercase hexadecimal digits as GET /v1/models lists them (e.g. "
            "1bed7b64d88ad135), or the weights' whole sha256 (64 digits)",
            {"value": quoted(value)},
        )
    return value


Version = Annotated[
    str,
    Field(examples=["1bed7b64d88ad135"], json_schema_extra={"pattern": f"^{VERSION.pattern}$"}),
    AfterValidator(version_form),
]


# the parts of an answer "include" may name; "summary" stands for q's summary, a source's name for that source
Part = Literal[
    "q",
    "samples",
    "log_weights",
    "diagnostics",
    "exact",
    "resampled",
    "summary",
    "summary.q",
    "summary.weighted",
    "summary.exact",
]
SUMMARY_SOURCES = ("summary.q", "summary.weighted", "summary.exact")
DEFAULT_PARTS = frozenset({"q", "samples", "log_weights", "diagnostics", "exact"})  # and "resampled" with resample
DRAWN_PARTS = frozenset({"samples", "log_weights", "diagnostics", "resampled", "summary.weighted"})  # made of draws


def resolve_parts(include: Sequence[str] | None, num_samples: int, resample: bool) -> frozenset[str]:
    """The parts an answer holds: ``include``'s, "summary" expanded into its sources, or the default.

    The default is today's answer: q, samples, log_weights, diagnostics and
    exact, and resampled when ``resample``. "summary" means one summary, of q
    (the network's posterior, which exists without draws and for every model):
    a dashboard's summaries-only answer carries one set of numbers per
    observation; the other sources are asked by name (README, "Answers sized
    for their use").
    """
    if include is None:
        return DEFAULT_PARTS | ({"resampled"} if resample else set())
    parts = set(include)
    if "summary" in parts:
        parts.discard("summary")
        parts.add("summary.q")
    return frozenset(parts)


def requested_objectives(objective: str) -> list[Objective]:
    """The networks a request's ``objective`` asks for: "both" means pq and qp, side by side."""
    return list(OBJECTIVES) if objective == "both" else [objective]  # type: ignore[list-item]


class PosteriorRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    y: FiniteFloat | list[FiniteFloat] = Field(
        ...,
        description="one observation, or a list of them (at most AMORTIZED_MAX_BATCH, default 10000); finite numbers "
        "within +-1e9",
    )
    objective: Literal["pq", "qp", "both"] = Field(
        "pq", description="which compiled network answers: pq (mass-covering), qp (mode-seeking), or both side by side"
    )
    num_samples: int = Field(
        1000,
        ge=0,
        le=100_000,
        strict=True,
        description="samples of q per observation; 0 draws nothing, for an include without samples, log_weights, "
        "diagnostics, resampled and summary.weighted",
    )
    seed: int | None = Field(
        None,
        ge=0,
        lt=2**63,
        strict=True,
        description="random seed; the same request with the same seed returns identical samples (drawn below 2**53 "
        "when absent)",
    )
    resample: bool = Field(
        False, strict=True, description="also return sampling-importance-resampling draws (closer to the posterior)"
    )
    cross_check: bool = Field(
        True,
        strict=True,
        description="also estimate the evidence with the other compiled network and the mixture of both",
    )
    include: list[Part] | None = Field(
        None,
        min_length=1,
        max_length=len(get_args(Part)),
        description="the parts of each answer to return (model, versions, seed, y and objective always are): q, "
        "samples, log_weights, diagnostics, exact, resampled (with resample), summary (quantiles and central credible "
        "intervals of x, and the discrete latents' probabilities, of q: the same as summary.q), or summaries by "
        "source (summary.q, summary.weighted: of the importance-weighted draws, summary.exact: of the exact "
        "posterior; several may be listed); absent: q, samples, log_weights, "
        "diagnostics, exact and (with resample) resampled. What is left out is neither computed nor sent.",
        examples=[["summary"], ["q", "diagnostics"]],
    )
    # variants: pin the weights that answer
    version: Version | dict[Objective, Version] | None = Field(
        None,
        description='answer only with this version of the network (GET /v1/models lists them); with "both", or to pin '
        'the cross-check\'s network too, a mapping {"pq": ..., "qp": ...}; a version not served answers 409 naming the '
        "served ones",
    )


class Branch(BaseModel):
    latents: dict[str, int] = Field(
        ..., description='the discrete latents of this branch, e.g. {"k": 2, "z": 0}; empty if none'
    )
    probability: float = Field(..., description="q(branch | y)")
    mean: float = Field(..., description="mean of the normal q(x | y, branch)")
    std: float = Field(..., description="standard deviation of q(x | y, branch)")


class QParameters(BaseModel):
    branches: list[Branch] = Field(..., description="q(. | y) as discrete branches with a normal on x in each")


Samples = Annotated[
    dict[str, list[float | int | None]],
    Field(
        description="columnar samples keyed by latent name: x, and each discrete latent (null where it does not exist)"
    ),
]
Probabilities = Annotated[
    dict[str, dict[str, float]],
    Field(description='P(latent = value | y) per discrete latent, e.g. {"k": {"1": 0.3, "2": 0.7}}'),
]


class CrossCheck(BaseModel):
    other_objective: Objective = Field(..., description="the other compiled network used as a second proposal")
    num_samples: int = Field(
        ...,
        description="draws of each network the check used: max(num_samples, AMORTIZED_CROSS_CHECK_SAMPLES), so its "
        "power does not fall with num_samples",
    )
    log_evidence_other: float | None = Field(..., description="log p(y) estimated with the other network's samples")
    log_evidence_other_se: float | None = Field(..., description="its standard error (delta method)")
    log_evidence_mixture: float | None = Field(
        ..., description="log p(y) estimated with the defensive mixture of both networks"
    )
    log_evidence_mixture_se: float | None = Field(..., description="its standard error")
    missed_mass: float | None = Field(
        ...,
        description="estimated posterior mass where this q's density is below 1% of the posterior's (draws of q almost "
        "never land there); null when the pooled draws of both networks carry fewer than 10 effective draws (neither "
        "covers the posterior: the check cannot measure it, and misses_mass is true)",
    )
    missed_mass_se: float | None = Field(..., description="its standard error (null with missed_mass)")
    consistent: bool = Field(
        ...,
        description="false when the three estimates disagree beyond 3 standard errors: some q misses posterior mass",
    )
    misses_mass: bool = Field(
        ...,
        description="true when this q misses posterior mass: its evidence is below the mixture's, or missed_mass "
        "exceeds 1% by 2 standard errors",
    )


class Diagnostics(BaseModel):
    num_samples: int = Field(..., description="samples drawn from q for this observation")
    ess: float | None = Field(..., description="effective sample size (sum w)^2 / sum w^2")
    ess_fraction: float | None = Field(..., description="ESS / N")
    log_evidence: float | None = Field(..., description="logsumexp(log w) - log N, an estimate of log p(y)")
    log_evidence_se: float | None = Field(
        ...,
        description="standard error of log_evidence (delta method, sqrt(1/ESS - 1/N)); null with one sample, and "
        "where q's own weights are unreliable (collapsed or too heavy-tailed: the reason says which), since the "
        "weights cannot bound their own error then",
    )
    elbo: float | None = Field(..., description="mean log weight, a lower bound on log p(y)")
    pareto_k: float | None = Field(
        ..., description="PSIS k-hat of the weights: < 0.5 good, 0.5-0.7 usable, > 0.7 unreliable; null if not fittable"
    )
    verdict: Literal["reliable", "usable", "unreliable"] = Field(
        ...,
        description="can the importance estimates be trusted: never reliable below 100 samples or without the "
        "cross-check",
    )
    reason: str = Field(..., description="why, in a sentence: what was checked and what was not")
    posterior_mean_x: float | None = Field(..., description="self-normalised estimate of E[x | y]")
    posterior_std_x: float | None = Field(..., description="self-normalised estimate of the posterior std of x")
    discrete_probabilities: Probabilities
    cross_check: CrossCheck | None = Field(
        None, description="present when the other objective is compiled and cross_check is true"
    )


class Exact(BaseModel):
    log_evidence: float | None = Field(..., description="exact log p(y)")
    posterior_mean_x: float | None = Field(..., description="exact E[x | y]")
    posterior_std_x: float | None = Field(..., description="exact posterior standard deviation of x")
    discrete_probabilities: Probabilities
    kl_pq: float | None = Field(..., description="KL(p(.|y) || q(.|y)) over all latents, nats")
    kl_qp: float | None = Field(..., description="KL(q(.|y) || p(.|y)) over all latents, nats")


class SourceSummary(BaseModel):
    quantiles: dict[str, float | None] = Field(
        ...,
        description='quantiles of x keyed by level: {"0.05": ..., "0.25": ..., "0.5": ..., "0.75": ..., "0.95": ...}',
    )
    intervals: dict[str, list[float | None]] = Field(
        ...,
        description='central credible intervals of x keyed by level: {"0.8": [low, high], "0.95": [low, high]}, '
        "[quantile((1 - a)/2), quantile((1 + a)/2)]; the 50% interval is the quartiles [0.25, 0.75] and the 90% one "
        "[0.05, 0.95] (not sent twice)",
    )
    discrete_probabilities: Probabilities


class Summary(BaseModel):
    q: SourceSummary | None = Field(None, description="of q(. | y): its mixture CDF inverted")
    weighted: SourceSummary | None = Field(
        None,
        description="of the importance-weighted draws: the inverse of the weighted empirical CDF (Hyndman and Fan's "
        "definition 1 with weights; null numbers where the weights are not finite)",
    )
    exact: SourceSummary | None = Field(None, description="of the exact posterior: its mixture CDF inverted")


class PosteriorResult(BaseModel):
    model: str = Field(..., description="the model answered for")
    versions: dict[str, str] = Field(
        ...,
        description="the version (weights' sha256, first 16 hex digits) of every network that produced this answer, by "
        "objective",
    )
    seed: int = Field(
        ...,
        description="this observation's seed: the request's for a scalar y (or one drawn below 2**53), else derived "
        "per row;"
        ' {"y": y, "seed": seed} with the same settings replays this answer alone',
    )
    y: float = Field(..., description="the observation")
    objective: Objective = Field(..., description="the loss the answering network was compiled with")
    q: QParameters | None = Field(None, description="the compiled network's q(. | y) (unless include leaves it out)")
    samples: Samples | None = Field(None, description="draws from q(. | y), columnar (unless include leaves them out)")
    log_weights: list[float | None] | None = Field(
        None, description="log p(latents, y) - log q(latents | y), one per sample (unless include leaves them out)"
    )
    diagnostics: Diagnostics | None = Field(
        None, description="importance-weighted diagnostics of these samples (unless include leaves them out)"
    )
    exact: Exact | None = Field(
        None, description="the truth, which all four models know in closed form (unless include leaves it out)"
    )
    resampled: Samples | None = Field(None, description="SIR draws, when resample is true")
    summary: Summary | None = Field(None, description='posterior summaries of x, when include asks for "summary"')


class Comparison(BaseModel):
    model: str = Field(..., description="the model answered for")
    seed: int = Field(..., description="this observation's seed (each objective's answer draws from it afresh)")
    y: float = Field(..., description="the observation")
    objectives: dict[str, PosteriorResult] = Field(
        ..., description="the answer of each compiled network, keyed by objective"
    )


class BatchResponse(BaseModel):
    model: str = Field(..., description="the model answered for")
    seed: int = Field(
        ..., description="the request's seed (echoed, or drawn below 2**53); each result carries its row's own seed"
    )
    results: list[PosteriorResult | Comparison] = Field(
        ..., description="one answer per observation, in the request's order"
    )


PosteriorResponse = PosteriorResult | Comparison | BatchResponse


class ModelSummary(BaseModel):
    name: str = Field(..., description="the model's name in URLs")
    title: str = Field(..., description="a human title")
    description: str = Field(..., description="the generative model in one line")
    latents: list[str] = Field(..., description="discrete latents, then x")
    branches: list[dict[str, int]] = Field(..., description="the discrete branches of the posterior")
    params: dict = Field(..., description="the model's parameters")
    objectives: list[str] = Field(..., description="losses with a compiled network being served")
    family: str = Field(..., description="the model family this variant is of (the defaults are named after theirs)")
    versions: dict[str, str] = Field(
        ..., description="the served version of each objective's network (weights' sha256, 16 hex digits)"
    )


class ModelDetail(ModelSummary):
    artifacts: dict[str, dict] = Field(
        ..., description="each served artifact's manifest: training settings, sha256, metrics"
    )


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(..., description='where: e.g. ["body", "y", 3]')
    msg: str = Field(..., description="why")
    type: str = Field(..., description="a machine-readable kind, e.g. float_type, not_found, http_413")


class ErrorResponse(BaseModel):
    detail: list[ErrorItem] = Field(..., description="one item per problem")
