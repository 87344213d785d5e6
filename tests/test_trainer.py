"""The compiler's command line: compile, determinism, interruption, figures, report."""

import json

import pytest
import torch

from amortized import artifacts
from amortized.artifacts import load_artifact
from amortized.figures import posterior_png
from amortized.models import MODELS, build_model
from tests.conftest import ARTIFACTS
from trainer.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def weights_sha(root, model="gaussian", objective="pq") -> str:
    return json.loads((root / model / f"{objective}.json").read_text())["weights"]["sha256"]


def test_compile_writes_loadable_artifacts_and_figures(tmp_path, capsys):
    assert main(["compile", "--model", "gmm_open", "--steps", "60", "--jobs", "1", "--out", str(tmp_path)]) == 0
    for objective in ("pq", "qp"):
        artifact = load_artifact(tmp_path / "gmm_open" / f"{objective}.json")
        assert artifact.manifest.training.total_steps == 60 and "kl_pq" in artifact.manifest.metrics
    for figure in ("posteriors.png", "network_outputs.png"):
        assert (tmp_path / "gmm_open" / figure).read_bytes().startswith(PNG)
    assert "compiled 2 artifact(s)" in capsys.readouterr().out


def test_same_seed_same_weights_in_parallel_or_not(tmp_path):
    args = ["compile", "--model", "gaussian", "gmm_discrete", "--steps", "40", "--no-figures"]
    main([*args, "--jobs", "1", "--seed", "3", "--out", str(tmp_path / "a")])
    main([*args, "--jobs", "2", "--seed", "3", "--out", str(tmp_path / "b")])
    main([*args, "--jobs", "1", "--seed", "4", "--out", str(tmp_path / "c")])
    for model in ("gaussian", "gmm_discrete"):
        assert (
            weights_sha(tmp_path / "a", model)
            == weights_sha(tmp_path / "b", model)
            != weights_sha(tmp_path / "c", model)
        )


def test_an_interrupted_compile_leaves_the_previous_artifact(tmp_path, monkeypatch, capsys):
    small = ["compile", "--model", "gaussian", "--objective", "pq", "--steps", "40", "--jobs", "1", "--no-figures"]
    main([*small, "--out", str(tmp_path)])
    manifest = tmp_path / "gaussian" / "pq.json"
    before, sha = manifest.read_bytes(), weights_sha(tmp_path)
    real_write = artifacts.atomic_write

    def ctrl_c_at_the_commit_point(path, data, *staging):
        if path.suffix == ".json":
            raise KeyboardInterrupt
        real_write(path, data, *staging)

    monkeypatch.setattr(artifacts, "atomic_write", ctrl_c_at_the_commit_point)
    status = main([*small, "--seed", "9", "--out", str(tmp_path)])
    assert status == 130 and "interrupted" in capsys.readouterr().err
    assert manifest.read_bytes() == before
    artifact = load_artifact(manifest)  # checksum verified: the old weights are intact
    assert artifact.manifest.weights.sha256 == sha
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and ".staging" in p.name]


def test_a_compile_interrupted_before_it_writes_leaves_no_empty_folders(tmp_path, monkeypatch, capsys):
    """The folders made for the artifacts (--out and a folder per variant) go again when nothing was written there."""
    existing = tmp_path / "existing"
    existing.mkdir()

    def ctrl_c_before_the_first_write(path, data, *staging):
        raise KeyboardInterrupt

    monkeypatch.setattr(artifacts, "atomic_write", ctrl_c_before_the_first_write)
    for out in (tmp_path / "fresh" / "deeper", existing):
        argv = ["compile", "--model", "gaussian", "--objective", "pq", "--steps", "5", "--jobs", "1", "--no-figures"]
        assert main([*argv, "--out", str(out)]) == 130 and "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["existing"]  # made by the user: kept, and nothing in it


def test_bad_options_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["compile", "--model", "nope"])
    with pytest.raises(SystemExit):
        main(["compile", "--all", "--steps", "0"])
    assert main(["compile", "--all", "--warm-start", "0.8", "--blend", "0.5"]) == 2


def test_an_out_that_cannot_hold_artifacts_is_refused_before_training(tmp_path, capsys):
    plain_file = tmp_path / "a_file"
    plain_file.write_text("not a folder")
    for out in (plain_file, plain_file / "below"):
        assert main(["compile", "--model", "gaussian", "--steps", "20", "--no-figures", "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert f"--out {out}" in error and "nothing compiled" in error
    assert plain_file.read_text() == "not a folder"


@pytest.mark.parametrize("name", MODELS)
def test_posterior_figure_even_for_extreme_y(name):
    model = build_model(name)
    for y in (0.0, 1e6):
        exact = model.exact_posterior(torch.tensor([y]))
        assert posterior_png(model, y, {"pq": exact}).startswith(PNG)


def test_report_lists_every_artifact(capsys):
    assert main(["report", "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    for model in MODELS:
        for objective in ("pq", "qp"):
            assert f"| {model} | {model} | {objective} |" in out
    assert "REFUSED" not in out


def test_report_lists_a_refused_artifact_with_its_reason_and_exits_1(tmp_path, capsys):
    """A malformed manifest beside good ones: the good ones are tabulated, the bad one named, the status is 1."""
    import shutil

    from tests.conftest import ARTIFACTS

    shutil.copytree(ARTIFACTS / "gaussian", tmp_path / "gaussian")
    manifest = tmp_path / "gaussian" / "qp.json"
    manifest.write_text(manifest.read_text().replace('"seed": 0', '"seed": "zero"', 1))
    assert main(["report", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    # the evaluation table's row, then the calibration table's: the good network's only
    assert [line.split()[:2] for line in out.splitlines() if line.startswith("gaussian ")] == [
        ["gaussian", "gaussian"],
        ["gaussian", "pq"],
    ]
    assert not [line for line in out.splitlines() if line.startswith("gaussian ") and " qp " in line]
    assert f"REFUSED {manifest}" in out and "training.seed" in out
    shutil.copytree(ARTIFACTS / "gaussian", tmp_path / "good")
    assert main(["report", "--dir", str(tmp_path / "good")]) == 0


def test_figures_redraws_only_the_pngs(tmp_path, capsys):
    import shutil

    from tests.conftest import ARTIFACTS

    shutil.copytree(ARTIFACTS / "gaussian", tmp_path / "gaussian")
    before = {p.name: p.read_bytes() for p in (tmp_path / "gaussian").iterdir()}
    for png in (tmp_path / "gaussian").glob("*.png"):
        png.write_bytes(b"stale")
    assert main(["figures", "--dir", str(tmp_path), "--variant", "gaussian"]) == 0
    after = {p.name: p.read_bytes() for p in (tmp_path / "gaussian").iterdir()}
    assert set(after) == set(before)
    for name, data in after.items():
        if name.endswith(".png"):
            assert data.startswith(PNG)
        else:
            assert data == before[name], f"{name} changed"
    assert "posteriors.png" in capsys.readouterr().out


@pytest.mark.parametrize(
    "variable, value, flag, why",
    [
        ("AMORTIZED_JOB_WORKERS", "abc", "--workers", "must be a whole number, got 'abc'"),
        ("AMORTIZED_JOB_WORKERS", "0", "--workers", "must be at least 1, got 0"),
        ("AMORTIZED_JOB_NICE", "x", "--nice", "must be a whole number, got 'x'"),
        ("AMORTIZED_JOB_STALE_SECONDS", "0", "--stale-seconds", "must be positive, got 0"),
    ],
)
def test_a_bad_worker_variable_stops_the_worker_only_and_names_itself(
    tmp_path, monkeypatch, capsys, variable, value, flag, why
):
    """The worker's defaults come from the environment; a bad one used to crash every command with a traceback."""
    monkeypatch.setenv(variable, value)
    assert main(["report", "--dir", str(ARTIFACTS)]) == 0 and "gmm" in capsys.readouterr().out
    assert main(["worker", "--artifacts", str(tmp_path)]) == 2
    assert f"${variable}={value!r} (the default of {flag}): {why}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before the queue was opened


@pytest.mark.parametrize("model, objective", [("gaussian", "qp"), ("gmm_discrete", "pq")])
def test_replace_if_better_keeps_a_served_network_that_a_bad_recipe_would_replace(tmp_path, capsys, model, objective):
    """A recompile with a bad recipe (one step at rate 1) replaced a good network and deleted its weights. With
    --replace if_better (the job API's default) the served files stay byte for byte and the exit status says so;
    a recipe as good replaces it; --replace always replaces it whatever it scores."""
    import shutil

    shutil.copytree(ARTIFACTS / model, tmp_path / model)
    folder = tmp_path / model
    before = {path.name: path.read_bytes() for path in folder.iterdir() if path.name.startswith(objective)}
    bad = ["compile", "--model", model, "--objective", objective, "--steps", "1", "--learning-rate", "1.0"]
    common = ["--jobs", "1", "--no-figures", "--out", str(tmp_path)]
    assert main([*bad, *common, "--replace", "if_better"]) == 1
    captured = capsys.readouterr()
    served = load_artifact(folder / f"{objective}.json").manifest
    assert f"not written: the served network {served.version} stays (kl_{objective} " in captured.out, captured.out
    assert "compiled 0 artifact(s)" in captured.out and "kept (--replace if_better)" in captured.err
    after = {path.name: path.read_bytes() for path in folder.iterdir() if path.name.startswith(objective)}
    assert after == before
    # the recipe's own settings: as good (within the tolerance), so written
    seed = ["compile", "--model", model, "--objective", objective, "--seed", "5"]
    assert main([*seed, *common, "--replace", "if_better"]) == 0
    good = load_artifact(folder / f"{objective}.json").manifest
    assert good.version != served.version and good.training.seed == 5
    assert main([*bad, *common]) == 0  # always, the command line's default
    assert "poor: amortisation gap" in capsys.readouterr().out  # written, and said to be far from its best
    worse = load_artifact(folder / f"{objective}.json").manifest
    assert worse.version != good.version and worse.metrics[f"kl_{objective}"] > good.metrics[f"kl_{objective}"] + 0.01
