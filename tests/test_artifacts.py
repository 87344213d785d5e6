"""Artifacts: round trip, checksums, no code execution, atomic replacement."""

import json

import pytest
import torch

from amortized import artifacts
from amortized.artifacts import ArtifactError, discover_artifacts, load_artifact, save_artifact
from amortized.models import build_model
from amortized.networks import build_network
from amortized.training import compile_network, recipe


def compile_small(root, name="gmm_open", objective="qp", seed=0, steps=30):
    model = build_model(name)
    config = recipe(name, objective, steps=steps, seed=seed)
    network, result = compile_network(model, config)
    path = save_artifact(root, model, network, objective, config, result, metrics={"note": "test"})
    return path, network


def test_round_trip_gives_identical_outputs(tmp_path):
    path, network = compile_small(tmp_path)
    loaded = load_artifact(path)
    y = torch.linspace(-30, 30, 101)
    with torch.no_grad():
        before, after = network(y), loaded.network(y)
    for field in ("log_probs", "means", "stds"):
        assert torch.equal(getattr(before, field), getattr(after, field))
    manifest = json.loads(path.read_text())
    assert manifest["variant"] == manifest["family"] == "gmm_open" and manifest["objective"] == "qp"
    assert manifest["training"]["seed"] == 0 and manifest["versions"]["torch"] == torch.__version__
    assert (path.parent / manifest["weights"]["file"]).stat().st_size == manifest["weights"]["bytes"]


def test_tampered_weights_are_refused_and_the_others_still_load(tmp_path):
    good, _ = compile_small(tmp_path, "gmm_open", "pq")
    bad, _ = compile_small(tmp_path, "gmm_open", "qp")
    weights = bad.parent / json.loads(bad.read_text())["weights"]["file"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit in the last tensor value
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_artifact(bad)
    loaded, refused = discover_artifacts(tmp_path)
    assert list(loaded) == [("gmm_open", "pq")] and list(refused) == [bad]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["weights"].update(file="../../etc/passwd"), "plain .safetensors name"),
        (lambda m: m["weights"].update(file="weights.pt"), "plain .safetensors name"),
        (lambda m: m.update(objective="nope"), "malformed manifest"),
        (lambda m: m.pop("weights"), "malformed manifest"),
    ],
)
def test_malformed_manifests_are_refused(tmp_path, edit, message):
    path, _ = compile_small(tmp_path)
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=message):
        load_artifact(path)


def test_a_pickle_named_as_weights_is_not_executed(tmp_path):
    """Weights are parsed by safetensors only: a pickle with a valid checksum is rejected, never run."""
    import hashlib
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle executed')",))

    path, _ = compile_small(tmp_path)
    manifest = json.loads(path.read_text())
    payload = pickle.dumps(Boom())
    (path.parent / manifest["weights"]["file"]).write_bytes(payload)
    manifest["weights"]["sha256"] = hashlib.sha256(payload).hexdigest()
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="cannot rebuild"):
        load_artifact(path)


def test_an_interrupted_save_keeps_the_previous_artifact(tmp_path, monkeypatch):
    path, first = compile_small(tmp_path, seed=0)
    before = path.read_bytes()
    real_write = artifacts.atomic_write

    def interrupted(target, data, *staging):
        if target.suffix == ".json":  # the commit point: die just before the manifest lands
            raise KeyboardInterrupt
        real_write(target, data, *staging)

    monkeypatch.setattr(artifacts, "atomic_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compile_small(tmp_path, seed=1)
    assert path.read_bytes() == before
    loaded = load_artifact(path)
    assert torch.equal(loaded.network(torch.zeros(1)).means, first(torch.zeros(1)).means)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and ".staging" in p.name]


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        artifacts.atomic_write(target, b"new" * 1000)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_files_a_killed_writer_left_are_staged_outside_the_model_folders_and_removed(tmp_path):
    """SIGKILL skips every cleanup: what it leaves is under <root>/.staging, which loading skips.

    The next save removes it.

    bench/kill_trainer.py kills the trainer 20 times at random moments; this is the state one such kill leaves.
    """
    import os
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    staging = tmp_path / artifacts.STAGING
    staging.mkdir()
    left = staging / f".staging-{dead.pid}-qp.json.x1"
    left.write_text("{ half a manifest")
    ours = staging / f".staging-{os.getpid()}-pq.json.x2"  # a live writer's file is not touched
    ours.write_text("{ being written")
    assert discover_artifacts(tmp_path) == ({}, {})  # nothing under .staging is taken for an artifact
    path, _ = compile_small(tmp_path)
    assert not left.exists() and ours.exists()
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    loaded, refused = discover_artifacts(tmp_path)
    assert list(loaded) == [("gmm_open", "qp")] and not refused


@pytest.mark.parametrize(
    "architecture, words",
    [
        ({"hidden": [12000, 12000]}, "continuous.0.bias is 12000 in the architecture, 64 in pq-"),
        ({"hidden": [64]}, "continuous.2.bias is 2 in the architecture, 64 in pq-"),  # the output layer comes early
        ({"hidden": [64, 64, 64]}, "continuous.4.bias is 64 in the architecture, 2 in pq-"),
    ],
)
def test_an_architecture_that_disagrees_with_the_weights_is_refused_before_the_network_is_made(
    tmp_path, monkeypatch, architecture, words
):
    """A manifest whose hidden said 12000 units was built in full (1.1 GB, seconds of CPU) before its weights were
    found not to fit. The shapes are compared first, on torch's meta device: no network is made on the CPU."""
    path, _ = compile_small(tmp_path, "gmm_discrete", "pq")
    manifest = json.loads(path.read_text())
    manifest["architecture"].update(architecture)
    path.write_text(json.dumps(manifest))
    made_on = []

    def recording(*args, **kwargs):
        made_on.append(torch.empty(0).device.type)
        return build_network(*args, **kwargs)

    monkeypatch.setattr(artifacts, "build_network", recording)
    with pytest.raises(ArtifactError, match="does not match the weights") as refused:
        load_artifact(path)
    assert words in str(refused.value) and made_on == ["meta"]
