"""Variants: spec validation (field and reason), the trainer's command line round trip, manifests of format 1 and 2."""

import json
import math
import shutil

import numpy as np
import pytest

from amortized.artifacts import ArtifactError, discover_artifacts, load_artifact, upgrade_manifest
from amortized.models import MODELS, build_model
from amortized.networks import build_network
from amortized.training import compile_network
from amortized.variants import NAME_PATTERN, SpecError, VariantSpec, default_spec, parse_spec, read_spec
from tests.conftest import ARTIFACTS, EXAMPLES
from trainer.cli import main


def problems(data) -> dict[str, str]:
    with pytest.raises(SpecError) as error:
        parse_spec(data)
    return dict(error.value.problems)


def test_a_spec_takes_the_familys_defaults_for_what_it_leaves_out():
    spec = parse_spec({"name": "gmm_sigma5", "family": "gmm", "params": {"sigma": 5}})
    assert spec.params == {"weights": [0.5, 0.5], "means": [-5.0, 5.0], "stds": [1.0, 1.0], "sigma": 5.0}
    assert spec.objectives == ["pq", "qp"] and spec.build_model().sigma == 5.0
    assert spec.training_config("qp").total_steps == 10000  # the gmm recipe
    assert default_spec("gmm").params == MODELS["gmm"]().params.model_dump()


@pytest.mark.parametrize(
    "data, where, reason",
    [
        (
            {"name": "g", "family": "gmm", "params": {"weights": [0.6, 0.6]}},
            "params.weights",
            "must sum to 1 (they sum to 1.2)",
        ),
        (
            {"name": "g", "family": "gmm", "params": {"stds": [1.0, -2.0]}},
            "params.stds.1",
            "greater than or equal to 0.000001",
        ),
        (
            {"name": "g", "family": "gmm", "params": {"stds": [1.0, 0.0]}},
            "params.stds.1",
            "greater than or equal to 0.000001",
        ),
        (
            {"name": "g", "family": "gaussian", "params": {"sigma0": -1}},
            "params.sigma0",
            "greater than or equal to 0.000001",
        ),
        ({"name": "g", "family": "gmm", "params": {"sigma": float("nan")}}, "params.sigma", "finite"),
        ({"name": "g", "family": "gmm", "params": {"means": [0.0]}}, "params", "same length"),
        (
            {"name": "g", "family": "gmm", "params": {"sgima": 5}},
            "params.sgima",
            "unknown parameter 'sgima' for family gmm; known: weights",
        ),
        (
            {"name": "g", "family": "gmm_closed"},
            "family",
            "unknown family 'gmm_closed'; the families are gaussian, gmm",
        ),
        ({"name": "g", "family": "gmm", "color": "red"}, "color", "unknown field 'color'"),
        (
            {"name": "Gmm-5", "family": "gmm"},
            "name",
            "lowercase letters, digits or underscores, starting with a letter",
        ),
        ({"name": "5gmm", "family": "gmm"}, "name", "starting with a letter"),
        ({"name": "g" * 49, "family": "gmm"}, "name", "1 to 48"),
        ({"family": "gmm"}, "name", "Field required"),
        (
            {
                "name": "g",
                "family": "gmm",
                "params": {"weights": [1 / 17] * 17, "means": [0.0] * 17, "stds": [1.0] * 17},
            },
            "params.weights",
            "at most 16 items",
        ),
        (
            {
                "name": "g",
                "family": "gmm_open",
                "params": {"universes": [{"probability": 0.1, "weights": [1.0], "means": [0.0], "stds": [1.0]}] * 10},
            },
            "params.universes",
            "at most 8 items",
        ),
        (
            {
                "name": "g",
                "family": "gmm_open",
                "params": {
                    "universes": [{"probability": 0.5, "weights": [0.125] * 8, "means": [0.0] * 8, "stds": [1.0] * 8}]
                    * 2
                    + [{"probability": 0.0, "weights": [1.0], "means": [0.0], "stds": [1.0]}]
                },
            },
            "params.universes.2.probability",
            "greater than 0",
        ),
        (
            {
                "name": "g",
                "family": "gmm_open",
                "params": {
                    "universes": [{"probability": 0.25, "weights": [0.2] * 5, "means": [0.0] * 5, "stds": [1.0] * 5}]
                    * 4
                },
            },
            "params.universes",
            "20 components in all: at most 16",
        ),
        (
            {
                "name": "g",
                "family": "gmm_open",
                "params": {"universes": [{"probability": 1.0, "weights": [0.5, 0.4], "means": [0, 1], "stds": [1, 1]}]},
            },
            "params.universes.0.weights",
            "must sum to 1",
        ),
        (  # each weight positive, their product p(k) pi_kz (a component's prior weight) below the smallest double
            {
                "name": "g",
                "family": "gmm_open",
                "params": {
                    "universes": [
                        {"probability": 1 - 1e-200, "weights": [1.0], "means": [0.0], "stds": [1.0]},
                        {
                            "probability": 1e-200,
                            "weights": [0.5, 0.5 - 1e-170, 1e-170],
                            "means": [0, 1, 2],
                            "stds": [1] * 3,
                        },
                    ]
                },
            },
            "params.universes",
            "universes[1]: probability 1e-200 times weights[2] 1e-170 is 0 in double precision",
        ),
        ({"name": "g", "family": "gmm", "training": {"steps": 0}}, "training.steps", "from 1 to 100000"),
        ({"name": "g", "family": "gmm", "training": {"steps": {"pq": 200_000}}}, "training.steps", "from 1 to 100000"),
        (
            {"name": "g", "family": "gmm", "training": {"warm_start": 0.8, "blend": 0.5}},
            "training",
            "must not exceed 1",
        ),
        ({"name": "g", "family": "gmm", "objectives": ["pq", "kl"]}, "objectives.1", "'pq' or 'qp'"),
        ({"name": "g", "family": "gmm", "family_options": {"input_gain": 0}}, "family_options.input_gain", "than 0"),
        ({"name": "g", "family": "gmm", "family_options": {"input_gain": -3}}, "family_options.input_gain", "than 0"),
        ({"name": "g", "family": "gmm", "family_options": {"input_gain": 1e3}}, "family_options.input_gain", "100"),
        (
            {"name": "g", "family": "gmm", "family_options": {"input_gain": float("inf")}},
            "family_options.input_gain",
            "finite",
        ),
        (
            {"name": "g", "family": "gmm", "family_options": {"input_gain": "ten"}},
            "family_options.input_gain",
            "valid number",
        ),
        # options the model's network does not take: refused here, not by a job that has started
        (
            {"name": "g", "family": "gaussian", "family_options": {"mixture_components": 2}},
            "family_options",
            "the linear_gaussian family takes no option 'mixture_components'; it takes: none",
        ),
        (
            {"name": "g", "family": "gaussian", "family_options": {"input_gain": 30}},
            "family_options",
            "takes no option 'input_gain'",
        ),
        # numbers only, never a string or a boolean read as one
        ({"name": "g", "family": "gmm", "params": {"sigma": "1"}}, "params.sigma", "valid number"),
        ({"name": "g", "family": "gmm", "params": {"sigma": True}}, "params.sigma", "valid number"),
        ({"name": "g", "family": "gmm", "params": {"means": [-5, "5"]}}, "params.means.1", "valid number"),
        ({"name": "g", "family": "gaussian", "params": {"sigma0": False}}, "params.sigma0", "valid number"),
        ({"name": "g", "family": "gmm", "training": {"learning_rate": "0.1"}}, "training.learning_rate", "number"),
        ({"name": "g", "family": "gmm", "training": {"blend": True}}, "training.blend", "valid number"),
        ({"name": "g", "family": "gmm", "training": {"steps": "500"}}, "training.steps", "whole numbers from 1"),
        ({"name": "g", "family": "gmm", "training": {"steps": 1e30}}, "training.steps", "whole numbers from 1"),
        ({"name": "g", "family": "gmm", "training": {"steps": [5]}}, "training.steps", "whole numbers from 1"),
        ({"name": "g", "family": "gmm", "training": {"steps": {"zz": 5}}}, "training.steps", "keyed by pq or qp"),
        # an empty mapping was taken as "the recipe's steps" for every objective
        ({"name": "g", "family": "gmm", "training": {"steps": {}}}, "training.steps", "{} names none"),
        ({"name": "g", "family": "gmm", "training": {"steps": {"qp": "5"}}}, "training.steps", "(got '5')"),
        ({"name": "g", "family": "gmm", "family_options": {"input_gain": "2"}}, "family_options.input_gain", "number"),
        # scales so small that 1 / s^2 divides by zero (a 500 and a failed job before): refused where they stand
        (
            {"name": "g", "family": "gaussian", "params": {"sigma": 1e-200}},
            "params.sigma",
            "greater than or equal to 0.000001",
        ),
        ({"name": "g", "family": "gaussian", "params": {"sigma0": 5e-324}}, "params.sigma0", "equal to 0.000001"),
        ({"name": "g", "family": "gmm", "params": {"stds": [1e-200, 1]}}, "params.stds.0", "equal to 0.000001"),
        ({"name": "g", "family": "gmm", "params": {"sigma": 9.9e-7}}, "params.sigma", "equal to 0.000001"),
        (
            {"name": "g", "family": "gmm_open", "params": {"universes": [{"probability": 1, "stds": [1e-7]}]}},
            "params.universes.0.stds.0",
            "equal to 0.000001",
        ),
        # steps for an objective the spec does not compile: a mistake, not ignored
        (
            {"name": "g", "family": "gmm", "objectives": ["pq"], "training": {"steps": {"qp": 10}}},
            "training",
            "steps are given for qp, which this spec does not compile",
        ),
    ],
)
def test_an_invalid_spec_names_the_field_and_the_reason(data, where, reason):
    found = problems(data)
    assert where in found and reason in found[where], found
    assert not [w for w in found if "[" in w or "constrained-" in w], found  # no union member's tag in a location


def test_every_problem_is_reported_at_once():
    found = problems({"name": "X", "family": "gmm", "params": {"sigma": -1, "stds": [1, -1]}, "objectives": []})
    assert {"name", "params.sigma", "params.stds.1", "objectives"} <= set(found)


def test_spec_files_json_and_yaml(tmp_path):
    (tmp_path / "a.json").write_text('{"name": "a", "family": "gaussian", "params": {"sigma": 2}}')
    (tmp_path / "b.yaml").write_text("name: b\nfamily: gmm_discrete\nparams:\n  sigma: 4  # noisier\n")
    (tmp_path / "twice.json").write_text('{"name": "a", "name": "b", "family": "gmm"}')
    (tmp_path / "lone.json").write_text('{"name": "a", "family": "gmm", "params": {"sigma": 1, "\\ud800": 2}}')
    (tmp_path / "deep_twice.yaml").write_text("name: a\nfamily: gmm\nparams:\n  stds: [1, {a: 1, a: 2}]\n")
    (tmp_path / "lone.yaml").write_text('name: a\nfamily: gmm\nfamily_options: {"\\ud800": 1}\n')
    (tmp_path / "twice.yaml").write_text("name: a\nfamily: gmm\nparams:\n  sigma: 1\n  sigma: 9\n")
    (tmp_path / "merged.yaml").write_text("base: &b {sigma: 2}\nname: m\nfamily: gaussian\nparams: {<<: *b}\n")
    (tmp_path / "broken.json").write_text('{"name": ')
    assert read_spec(tmp_path / "a.json").params == {"mu0": 0.0, "sigma0": 1.0, "sigma": 2.0}
    assert read_spec(tmp_path / "b.yaml").build_model().sigma == 4.0
    for name, reason in (
        ("twice.json", "'name' appears more than once"),
        ("twice.yaml", "params.sigma: key 'sigma' appears more than once in one object: YAML"),  # PyYAML: sigma 9
        ("deep_twice.yaml", "params.stds.1.a: key 'a' appears more than once"),
        ("lone.yaml", "family_options.\\\\ud800: a lone surrogate"),  # pydantic's "unable to parse" at the parent
        ("lone.json", "params.\\\\ud800: a lone surrogate"),  # at its place, quoted as its escape
        ("merged.yaml", "unknown field 'base'"),  # a merge key is read (YAML's anchors are plain data)
        ("broken.json", "not valid JSON"),
        ("nope.json", "cannot read"),
    ):
        with pytest.raises(SpecError, match=reason):
            read_spec(tmp_path / name)


def test_the_example_specs_are_valid():
    specs = {spec.name: spec for spec in map(read_spec, sorted(EXAMPLES.iterdir()))}
    assert set(specs) == {"gmm_sigma5", "gmm_open_k3"}
    assert specs["gmm_sigma5"].family == "gmm" and specs["gmm_sigma5"].params["sigma"] == 5.0
    model = specs["gmm_open_k3"].build_model()
    assert {branch["k"] for branch in model.branches} == {1, 2, 3} and model.num_branches == 6


def test_the_name_rule_is_the_documented_one():
    assert NAME_PATTERN == r"^[a-z][a-z0-9_]{0,47}$"
    assert VariantSpec(name="a" * 48, family="gmm").name == "a" * 48


# the command line


def test_compile_a_spec_file_round_trip(tmp_path, capsys):
    spec = tmp_path / "noisy.json"
    spec.write_text(
        json.dumps(
            {
                "name": "gaussian_noisy",
                "family": "gaussian",
                "params": {"sigma": 2.0},
                "objectives": ["pq"],
                "training": {"steps": 40, "seed": 3},
            }
        )
    )
    assert main(["compile", "--spec", str(spec), "--jobs", "1", "--out", str(tmp_path / "out")]) == 0
    artifact = load_artifact(tmp_path / "out" / "gaussian_noisy" / "pq.json")
    manifest = artifact.manifest
    assert (manifest.variant, manifest.family, manifest.model_params["sigma"]) == ("gaussian_noisy", "gaussian", 2.0)
    assert manifest.training.total_steps == 40 and manifest.training.seed == 3 and manifest.format_version == 2
    assert artifact.model.exact_linear_parameters()["a"] == pytest.approx(0.2)  # (1/4) / (1 + 1/4)
    assert not (tmp_path / "out" / "gaussian_noisy" / "qp.json").exists()
    assert (tmp_path / "out" / "gaussian_noisy" / "posteriors.png").exists()
    assert "gaussian_noisy/pq" in capsys.readouterr().out


def test_compile_from_flags_and_flags_override_the_spec(tmp_path):
    out = tmp_path / "out"
    argv = [
        "compile",
        "--model",
        "gmm",
        "--name",
        "gmm_sigma5",
        "--params",
        '{"sigma": 5}',
        "--objective",
        "pq",
        "--steps",
        "30",
        "--seed",
        "2",
        "--jobs",
        "1",
        "--no-figures",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    manifest = load_artifact(out / "gmm_sigma5" / "pq.json").manifest
    assert manifest.model_params["sigma"] == 5.0 and manifest.training.total_steps == 30 and manifest.training.seed == 2
    loaded, refused = discover_artifacts(out)
    assert list(loaded) == [("gmm_sigma5", "pq")] and not refused


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "gmm", "--params", '{"sigma": 5}'], "needs a name: add --name"),
        (
            ["--model", "gmm", "--name", "gmm_sigma5", "--params", '{"sigma": -5}'],
            "params.sigma (from --params): Input should be greater than or equal to 0.000001",
        ),
        (["--model", "gmm", "--name", "gmm_sigma5", "--params", "{sigma: 5}"], "--params: not valid JSON"),
        (["--model", "gmm", "--name", "Gmm", "--params", "{}"], "name (from --name): a variant name is"),
        (["--model", "gmm", "gaussian", "--name", "x"], "exactly one family"),
        (["--name", "x"], "go with --model"),
        (["--all", "--warm-start", "0.8", "--blend", "0.5"], "warm_start + blend must not exceed 1"),
        (["--model", "gmm", "--warm-start", "1", "--blend", "0"], "training (from --warm-start, --blend): warm_start"),
        # a field set by a flag names the flag too
        (["--model", "gmm", "--learning-rate", "inf"], "training.learning_rate (from --learning-rate): Input should"),
        (["--model", "gmm", "--batch-size", "99999999"], "training.batch_size (from --batch-size): Input should"),
        (["--model", "gmm", "--mixture-components", "99"], "mixture_components (from --mixture-components): Input"),
        (["--model", "gaussian", "--objective", "qp", "--warm-start", "1", "--blend", "0"], "warm_start must be below"),
    ],
)
def test_invalid_command_lines_exit_2_and_write_nothing(tmp_path, capsys, argv, message):
    assert main(["compile", *argv, "--jobs", "1", "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--steps", "abc", "argument --steps: must be a whole number, got 'abc'"),
        ("--steps", "1.5", "argument --steps: must be a whole number, got '1.5'"),
        ("--steps", "0", "argument --steps: must be at least 1, got 0"),
        ("--batch-size", "many", "argument --batch-size: must be a whole number, got 'many'"),
        ("--learning-rate", "fast", "argument --learning-rate: must be a number, got 'fast'"),
        ("--warm-start", "half", "argument --warm-start: must be a number between 0 and 1, got 'half'"),
        ("--blend", "nan", "argument --blend: must be between 0 and 1, got nan"),
    ],
)
def test_a_flag_that_is_not_a_number_names_itself_and_what_it_needs(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exited:
        main(["compile", "--model", "gmm", flag, value, "--jobs", "1", "--out", str(tmp_path / "out")])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_one_bad_spec_among_good_ones_stops_everything(tmp_path, capsys):
    good, bad = tmp_path / "good.json", tmp_path / "bad.yaml"
    good.write_text('{"name": "good", "family": "gaussian", "training": {"steps": 20}}')
    bad.write_text("name: bad\nfamily: gmm\nparams:\n  weights: [0.7, 0.7]\n  stds: [1.0, -1.0]\n")
    assert main(["compile", "--spec", str(good), str(bad), "--jobs", "1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: params.weights: weights must sum to 1 (they sum to 1.4)" in err and f"{bad}: params.stds.1" in err
    assert "nothing compiled" in err and not (tmp_path / "out").exists()
    assert main(["compile", "--spec", str(good), str(good), "--out", str(tmp_path / "out")]) == 2  # one name, twice
    assert "more than once" in capsys.readouterr().err


def test_format_1_manifests_still_load_and_upgrade_in_place(tmp_path):
    """The committed manifests were format 1; the upgrade rewrites the manifest only: same weights, same sha256."""
    shutil.copytree(ARTIFACTS / "gmm", tmp_path / "gmm")
    path = tmp_path / "gmm" / "pq.json"
    manifest = json.loads(path.read_text())
    weights = (tmp_path / "gmm" / manifest["weights"]["file"]).read_bytes()
    old = {
        "format_version": 1,
        "model": "gmm",
        **{k: v for k, v in manifest.items() if k not in ("format_version", "variant", "family")},
    }
    path.write_text(json.dumps(old, indent=2) + "\n")
    artifact = load_artifact(path)
    assert (artifact.variant, artifact.manifest.family, artifact.manifest.format_version) == ("gmm", "gmm", 1)
    assert upgrade_manifest(path) and not upgrade_manifest(path)
    assert json.loads(path.read_text()) == manifest  # exactly the committed format-2 manifest
    assert (tmp_path / "gmm" / manifest["weights"]["file"]).read_bytes() == weights
    assert load_artifact(path).version == manifest["weights"]["sha256"][:16]


def test_a_manifest_must_sit_in_its_variants_folder_and_objectives_file(tmp_path):
    shutil.copytree(ARTIFACTS / "gmm", tmp_path / "gmm_sigma5")
    with pytest.raises(ArtifactError, match="folder 'gmm_sigma5' holds an artifact of variant 'gmm'"):
        load_artifact(tmp_path / "gmm_sigma5" / "pq.json")
    shutil.copytree(ARTIFACTS / "gmm", tmp_path / "gmm")
    (tmp_path / "gmm" / "qp.json").replace(tmp_path / "gmm" / "pq.json")
    with pytest.raises(ArtifactError, match="holds the qp network"):
        load_artifact(tmp_path / "gmm" / "pq.json")


@pytest.mark.parametrize(
    "family, options, expected",
    [
        ("gmm", {}, {"pq": {}, "qp": {"input_gain": 30.0}}),  # the recipe's
        ("gmm", {"input_gain": 1.0}, {"pq": {"input_gain": 1.0}, "qp": {"input_gain": 1.0}}),  # the spec's wins
        ("gmm_open", {"input_gain": 3.5}, {"pq": {"input_gain": 3.5}, "qp": {"input_gain": 3.5}}),
        (
            "gmm",
            {"mixture_components": 2},
            {"pq": {"mixture_components": 2}, "qp": {"mixture_components": 2, "input_gain": 30.0}},
        ),
    ],
)
def test_the_specs_input_gain_replaces_the_recipes(family, options, expected):
    spec = parse_spec({"name": "g", "family": family, "family_options": options})
    for objective in ("pq", "qp"):
        assert spec.training_config(objective).family_options == expected[objective]


def test_the_sigma5_example_trains_without_the_gain_tuned_for_sigma_1():
    spec = read_spec(EXAMPLES / "gmm_sigma5.json")
    assert spec.training_config("qp").family_options == {"input_gain": 1.0}
    manifest = json.loads((ARTIFACTS / "gmm_sigma5" / "qp.json").read_text())  # the committed artifact: compiled so
    assert manifest["training"].get("family_options", {}).get("input_gain", 1.0) == 1.0


def test_the_smallest_allowed_scales_build_and_train():
    """At the bound (1e-6, and 1e6 beside it) the model builds and a few steps train to finite numbers."""
    spec = parse_spec(
        {"name": "g", "family": "gmm", "params": {"stds": [1e-6, 1e6], "sigma": 1e-6}, "training": {"steps": 5}}
    )
    model = spec.build_model()
    exact, log_evidence = model.exact_posterior_and_evidence(np.array([0.0, 3.0]))
    assert np.isfinite(log_evidence).all() and np.isfinite(exact.stds).all() and (exact.stds > 0).all()
    _, result = compile_network(model, spec.training_config("pq"))
    assert math.isfinite(result["phases"][-1]["final_loss"])


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("option, value", [("mixture_components", 2), ("input_gain", 3.0)])
def test_a_spec_takes_a_family_option_exactly_when_its_network_can_be_built_with_it(family, option, value):
    """The spec's check and the network's constructor agree for every model family and option (a spec accepted
    here used to fail later, in its job: a gaussian with mixture_components)."""
    data = {"name": "g", "family": family, "family_options": {option: value}}
    try:
        build_network(build_model(family, {}), None, {option: value})
        builds = True
    except ValueError:
        builds = False
    if builds:
        assert parse_spec(data).family_options.model_dump(exclude_defaults=True) == {option: value}
    else:
        with pytest.raises(SpecError, match=f"takes no option '{option}'"):
            parse_spec(data)
