"""Variants: a name, a family of model and that family's parameters, and optionally how to compile it.

A family is one of the model classes (``gaussian``, ``gmm``, ``gmm_discrete``,
``gmm_open``); a variant is a family with parameters, under a name of its own.
The four defaults are the variants named after their families, with the
family's default parameters. A spec, as JSON or YAML::

    {"name": "gmm_sigma5", "family": "gmm", "params": {"sigma": 5.0}}

    {"name": "gmm_sigma5", "family": "gmm", "params": {"sigma": 5.0},
     "objectives": ["pq", "qp"], "training": {"steps": {"pq": 3000, "qp": 10000}, "seed": 0}}

Parameters left out take the family's defaults. Names are 1 to 48 characters:
lowercase letters, digits and underscores, starting with a letter
(:data:`NAME_PATTERN`); a name is also the variant's folder and its URL.

Validation lives here, independent of the command line and of HTTP, so that
the trainer and the service check a spec by the same rules: :func:`parse_spec`
raises :class:`SpecError`, whose ``problems`` name each field and the reason
(``params.stds.1: Input should be greater than 0``). The limits on a model's
layout are the model's own (``amortized.models.base``: MAX_COMPONENTS,
MAX_UNIVERSES, ...), so a manifest that breaks them is refused too; the limits
on training are here (MAX_STEPS, MAX_BATCH_SIZE).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from amortized.inputs import (
    DuplicateKey,
    LoneSurrogate,
    beyond_any_integer,
    quoted,
    shown,
    strict_json,
    strict_yaml,
)
from amortized.losses import OBJECTIVES, Objective
from amortized.models import MODELS, ConjugateMixtureModel, build_model
from amortized.networks import check_family_options, network_family
from amortized.training import BLEND, WARM_START, TrainingConfig, recipe

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,47}$"
MAX_NAME_LENGTH = 48
MAX_STEPS = 100_000  # optimiser steps per objective (the slowest default recipe, gmm's qp, uses 10000: about 15 s)
MAX_BATCH_SIZE = 8192  # observations per step
MAX_MIXTURE_COMPONENTS = 4  # normals on x per branch in the mixture family (each one more branch to answer with)
NAME_RULE = "1 to 48 lowercase letters, digits or underscores, starting with a letter"


def check_name(name: str) -> str:
    """``name`` if it is a valid variant name, else ValueError saying the rule."""
    if not isinstance(name, str) or re.fullmatch(NAME_PATTERN, name) is None:
        raise ValueError(f"a variant name is {NAME_RULE} (got {quoted(name)})")
    return name


class TrainingSettings(BaseModel):
    """How to compile a variant; anything left out takes the family's recipe (``amortized.training.RECIPES``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int | dict[Objective, int] | None = Field(
        None,
        description=f'optimiser steps, for every objective or per objective ({{"pq": 3000, "qp": 10000}}); 1 to '
        f"{MAX_STEPS}",
    )
    batch_size: int | None = Field(
        None, ge=1, le=MAX_BATCH_SIZE, strict=True, description=f"observations per step, 1 to {MAX_BATCH_SIZE}"
    )
    learning_rate: float | None = Field(
        None, gt=0, le=1, strict=True, allow_inf_nan=False, description="Adam's initial rate, decayed by a cosine"
    )
    seed: int = Field(0, ge=0, lt=2**63, strict=True, description="seed of initialisation and training")
    warm_start: float = Field(
        WARM_START, ge=0, le=1, strict=True, description="qp only: fraction of the steps on pq first"
    )
    blend: float = Field(
        BLEND, ge=0, le=1, strict=True, description="qp only: fraction of the steps blending pq into qp"
    )

    @field_validator("steps", mode="before")
    @classmethod
    def _steps_in_range(cls, steps: Any) -> Any:
        """One error at ``training.steps`` that says what steps may be, not one per member of the union."""
        if isinstance(steps, dict):
            unknown = [key for key in steps if key not in OBJECTIVES]
            if unknown:
                keyed = " or ".join(OBJECTIVES)
                raise ValueError(f"steps per objective are keyed by {keyed} (got {quoted(unknown[0])})")
            if not steps:  # {} was taken, and every objective compiled with the recipe's steps
                raise ValueError(
                    'steps per objective name at least one ({"pq": 3000}); {} names none: leave steps out for the '
                    "recipe's"
                )
        for value in steps.values() if isinstance(steps, dict) else [] if steps is None else [steps]:
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_STEPS:
                raise ValueError(
                    f"steps must be whole numbers from 1 to {MAX_STEPS}, for every objective or per objective "
                    f'({{"pq": 3000, "qp": 10000}}) (got {quoted(value)})'
                )
        return steps

    @model_validator(mode="after")
    def _schedule_fits(self) -> TrainingSettings:
        if self.warm_start + self.blend > 1:
            raise ValueError(f"warm_start + blend must not exceed 1 (got {self.warm_start} + {self.blend})")
        if self.warm_start >= 1:  # every step on pq: a "qp" network that never saw its own loss
            raise ValueError("warm_start must be below 1: at 1 a qp network trains on pq only, never on qp")
        return self

    def steps_for(self, objective: Objective) -> int | None:
        return self.steps if isinstance(self.steps, int) or self.steps is None else self.steps.get(objective)


MAX_INPUT_GAIN = 100.0


class FamilyOptions(BaseModel):
    """Options of q's family beyond the defaults (docs/science.md, "Families")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mixture_components: int = Field(
        1,
        ge=1,
        le=MAX_MIXTURE_COMPONENTS,
        strict=True,
        description="K normals on x per discrete branch (the mixture family, amortized/mixture.py); 1 to "
        f"{MAX_MIXTURE_COMPONENTS}",
    )
    input_gain: float | None = Field(
        None,
        gt=0,
        strict=True,
        le=MAX_INPUT_GAIN,
        allow_inf_nan=False,
        description="the factor on the scaled y at q's first layer, its weights there divided by it (the same function "
        "at the start; README, 'qp on gmm'); unset: the family's recipe (30 for gmm's qp, 1 otherwise). The recipe's "
        "gain is tuned on gmm's default parameters: for gmm with sigma = 5 a gain of 10 left a qp gap of 0.048 nats, 1 "
        "left 0.004 "
        f"(examples/variants/gmm_sigma5.json); up to {MAX_INPUT_GAIN:g}",
    )


class VariantSpec(BaseModel):
    """A variant to compile and serve: name, family, the family's parameters, and optionally how to compile it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., description=f"the variant's name, folder and URL: {NAME_RULE}", examples=["gmm_sigma5"])
    family: str = Field(..., description=f"the model family: {', '.join(MODELS)}", examples=["gmm"])
    params: dict[str, Any] = Field(
        default_factory=dict,
        validate_default=True,
        description="the family's parameters; those left out take the family's defaults",
        examples=[{"sigma": 5.0}],
    )
    objectives: list[Objective] = Field(
        default_factory=lambda: list(OBJECTIVES), min_length=1, description="the losses to compile (default: pq and qp)"
    )
    training: TrainingSettings = Field(
        default_factory=TrainingSettings, description="training settings (default: the family's recipe)"
    )
    family_options: FamilyOptions = Field(
        default_factory=FamilyOptions,
        description='q\'s family beyond its default, e.g. {"mixture_components": 2}; the MLP networks of gmm, '
        "gmm_discrete and gmm_open take these options, gaussian's linear network none",
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        return check_name(name)

    @field_validator("family")
    @classmethod
    def _known_family(cls, family: str) -> str:
        if family not in MODELS:
            raise ValueError(f"unknown family {quoted(family)}; the families are {', '.join(MODELS)}")
        return family

    @field_validator("params")
    @classmethod
    def _family_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Checked against the family's own parameters (errors keep their place: ``params.universes.0.weights``)."""
        family = info.data.get("family")
        if family is None:  # the family itself is invalid: reported there
            return params
        validated = MODELS[family].Params.model_validate(params)
        try:  # parameters valid one by one can still fail together: the model is built once here, not at compile
            MODELS[family](validated)
        except ArithmeticError as error:
            raise ValueError(f"the {family} model cannot be built with these parameters ({error})") from None
        return validated.model_dump()

    @field_validator("family_options")
    @classmethod
    def _options_of_the_network_family(cls, options: FamilyOptions, info: ValidationInfo) -> FamilyOptions:
        """Options the model family's network does not take are refused here, not when its job has started."""
        family = info.data.get("family")
        if family is not None:
            network = network_family(family)
            try:
                check_family_options(network, options.model_dump(exclude_defaults=True))
            except ValueError as error:
                raise ValueError(f"{error} (a {family} model compiles a {network} network)") from None
        return options

    @field_validator("objectives")
    @classmethod
    def _each_once(cls, objectives: list[str]) -> list[str]:
        if len(set(objectives)) != len(objectives):
            raise ValueError(f"each objective at most once (got {objectives})")
        return objectives

    @field_validator("training")
    @classmethod
    def _steps_of_compiled_objectives(cls, training: TrainingSettings, info: ValidationInfo) -> TrainingSettings:
        """Steps given per objective name only objectives this spec compiles (another is a mistake, not ignored)."""
        objectives = info.data.get("objectives")
        if isinstance(training.steps, dict) and objectives is not None:
            extra = sorted(set(training.steps) - set(objectives))
            if extra:
                raise ValueError(
                    f"steps are given for {' and '.join(extra)}, which this spec does not compile (objectives: "
                    f"{', '.join(objectives)}): add it to objectives, or leave its steps out"
                )
        return training

    def build_model(self) -> ConjugateMixtureModel:
        return build_model(self.family, self.params)

    def training_config(self, objective: Objective, **overrides: Any) -> TrainingConfig:
        """The family's recipe for ``objective`` with this spec's settings.

        Then ``overrides`` (None keeps the spec's).
        """
        t = self.training
        settings: dict[str, Any] = {
            "steps": t.steps_for(objective),
            "batch_size": t.batch_size,
            "learning_rate": t.learning_rate,
            "seed": t.seed,
            "warm_start": t.warm_start,
            "blend": t.blend,
        }
        settings.update({k: v for k, v in overrides.items() if v is not None})
        options = self.family_options.model_dump(exclude_defaults=True)
        return recipe(self.family, objective, **settings, family_options=options or None)


class SpecError(ValueError):
    """An invalid spec.

    ``problems`` is a list of (where, why), e.g. ("params.stds.1", "Input should be greater than 0"): where
    as a dotted path, for people. ``locations`` holds the same places as tuples, e.g. ("params", "stds", 1),
    for an API: a key may itself hold a dot or be digits (``{"params": {"a.b": 1}}``), which the dotted form
    cannot tell apart. A problem given with a tuple keeps it; one given with a dotted name is at that one name.
    """

    def __init__(
        self, source: str, problems: Sequence[tuple[str | tuple[str | int, ...], str]], kinds: Sequence[str] = ()
    ) -> None:
        self.source = source
        # each problem's kind, as pydantic names it (an API's error type): "value_error" where none is given
        self.kinds = [*kinds, *["value_error"] * (len(problems) - len(kinds))]
        self.locations = [where if isinstance(where, tuple) else (where,) if where else () for where, _ in problems]
        dotted = [".".join(shown(str(part)) for part in loc) for loc in self.locations]  # printable, bounded
        self.problems = [(where, why) for where, (_, why) in zip(dotted, problems, strict=True)]
        super().__init__("\n".join(f"{source}: {where or '(the spec)'}: {why}" for where, why in self.problems))


def _known_fields(loc: tuple, family: Any) -> list[str]:
    """The fields allowed where an unknown one was found (the spec, training, a family's parameters, a universe)."""
    if len(loc) == 1:
        return list(VariantSpec.model_fields)
    if loc[0] == "training":
        return list(TrainingSettings.model_fields)
    if loc[0] == "family_options":
        return list(FamilyOptions.model_fields)
    if loc[0] == "params" and family in MODELS:
        params = MODELS[family].Params
        if len(loc) == 2:
            return list(params.model_fields)
        universe = params.model_fields.get(str(loc[1]))
        item = getattr(universe, "annotation", None)
        inner = getattr(item, "__args__", ())
        if inner and isinstance(inner[0], type) and issubclass(inner[0], BaseModel):
            return list(inner[0].model_fields)
    return []


def problems_of(error: ValidationError, data: Any = None) -> list[tuple[tuple[str | int, ...], str]]:
    """(location, message) for each error, without pydantic's "Value error, " prefix.

    Unknown fields say what is known. Their kinds, in the same order: :func:`kinds_of`.
    """
    family = data.get("family") if isinstance(data, dict) else None
    out = []
    for item in error.errors():
        where, why = tuple(item["loc"]), beyond_any_integer(item) or item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            parameter = item["loc"][0] == "params" and len(item["loc"]) == 2
            known = _known_fields(item["loc"], family)
            why = f"unknown {'parameter' if parameter else 'field'} {quoted(item['loc'][-1])}" + (
                f" for family {family}" if parameter else ""
            )
            why += f"; known: {', '.join(known)}" if known else ""
        out.append((where, why))
    return out


def kinds_of(error: ValidationError) -> list[str]:
    """Each error's kind, as the service's answers name them (the order of :func:`problems_of`).

    Pydantic's type, or ``out_of_range`` where an integer field got a number beyond any
    (:func:`amortized.inputs.beyond_any_integer`); job specs were all ``value_error``.
    """
    return ["out_of_range" if beyond_any_integer(item) else item["type"] for item in error.errors()]


def parse_spec(data: Any, source: str = "spec") -> VariantSpec:
    """Validate plain data (parsed JSON or YAML) as a variant spec; SpecError names every bad field."""
    if not isinstance(data, dict):
        raise SpecError(source, [("", f"a spec is an object with name, family and params (got {type(data).__name__})")])
    try:
        return VariantSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(source, problems_of(error, data), kinds_of(error)) from None


def read_spec(path: Path | str) -> VariantSpec:
    """A spec file: JSON, or YAML when its name ends in .yaml or .yml. SpecError names the file, field and reason."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(str(path), [("", f"cannot read it: {error}")]) from None
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    try:
        data = strict_yaml(text) if is_yaml else strict_json(text)
    except ImportError:
        raise SpecError(
            str(path), [("", "reading YAML needs PyYAML (pip install pyyaml); or write the spec as JSON")]
        ) from None
    except (DuplicateKey, LoneSurrogate) as error:
        raise SpecError(str(path), [(tuple(error.path), str(error))]) from None
    except ValueError as error:  # json.JSONDecodeError is one
        raise SpecError(str(path), [("", f"not valid JSON: {error}")]) from None
    except Exception as error:  # yaml.YAMLError
        raise SpecError(str(path), [("", f"not valid YAML: {error}")]) from None
    return parse_spec(data, str(path))


def default_spec(family: str) -> VariantSpec:
    """The default variant of ``family``: named after it, with its default parameters."""
    return VariantSpec(name=family, family=family)


def default_variants() -> list[VariantSpec]:
    return [default_spec(family) for family in MODELS]


__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_NAME_LENGTH",
    "MAX_STEPS",
    "NAME_PATTERN",
    "SpecError",
    "TrainingSettings",
    "VariantSpec",
    "check_name",
    "default_spec",
    "default_variants",
    "parse_spec",
    "read_spec",
]
