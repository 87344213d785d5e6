"""Artifacts: a compiled network on disk, self-describing, checksummed, written atomically.

Layout, per model folder ``<root>/<model>/``:

- ``<objective>.json``: the manifest (model and parameters, architecture,
  training settings, versions, metrics, and the weights' file name and sha256);
- ``<objective>-<sha256[:16]>.safetensors``: the weights (safetensors never
  executes code on load, unlike pickle).

The manifest is the commit point. New weights go to a new, content-addressed
file; only then is the manifest replaced with ``os.replace`` (atomic), and only
after that is the old weights file removed. A crash, Ctrl-C or SIGKILL at any
moment leaves either the old artifact or the new one, complete. Every file is
first written and fsynced under ``<root>/.staging/`` (never a model folder, so
a writer killed mid-write leaves nothing where the server looks; the next save
removes what dead writers left there), then renamed into place. Loading reads
the weights once, checks their sha256 against the manifest, then parses those
same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy
import safetensors
import safetensors.torch
import torch
from pydantic import BaseModel, ValidationError

import amortized
from amortized.losses import Objective
from amortized.models import ConjugateMixtureModel, build_model
from amortized.networks import InferenceNetwork, build_network
from amortized.training import TrainingConfig

FORMAT_VERSION = 1


class ArtifactError(Exception):
    """An artifact that cannot be served: missing, malformed, or failing its checksum."""


class WeightsRecord(BaseModel):
    file: str
    sha256: str
    bytes: int


class Manifest(BaseModel):
    """Everything needed to rebuild, audit and judge one compiled network."""

    format_version: Literal[1] = FORMAT_VERSION
    model: str
    model_params: dict[str, Any]
    objective: Objective
    architecture: dict[str, Any]
    training: TrainingConfig
    training_result: dict[str, Any]
    weights: WeightsRecord
    versions: dict[str, str]
    metrics: dict[str, Any]
    created_at: str


@dataclass(frozen=True)
class Artifact:
    manifest: Manifest
    model: ConjugateMixtureModel
    network: InferenceNetwork
    path: Path


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "amortized": amortized.__version__,
    }


STAGING = ".staging"  # under an artifacts root: files being written (a dot folder: discover_artifacts skips it)


def atomic_write(path: Path, data: bytes, staging_folder: Path | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    The data is written and fsynced in ``staging_folder`` (default: ``path``'s
    own folder; same file system) under a name that starts with this process's
    id, then renamed onto ``path``.
    """
    folder = Path(staging_folder) if staging_folder is not None else path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(dir=folder, prefix=f".staging-{os.getpid()}-{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(staging, 0o644)  # mkstemp makes 0600; artifacts are read by other users (the server, a container)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def remove_dead_staging(root: Path) -> list[Path]:
    """Remove what writers that were killed left in ``<root>/.staging``: files whose process no longer runs."""
    removed = []
    for staged in (Path(root) / STAGING).glob(".staging-*"):
        try:
            pid = int(staged.name.split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            staged.unlink(missing_ok=True)
            removed.append(staged)
        except (ValueError, IndexError, PermissionError):  # not one of ours, or another user's live process
            pass
    return removed


def manifest_path(root: Path, model: str, objective: str) -> Path:
    return Path(root) / model / f"{objective}.json"


def save_artifact(
    root: Path,
    model: ConjugateMixtureModel,
    network: InferenceNetwork,
    objective: Objective,
    training: TrainingConfig,
    training_result: dict[str, Any],
    metrics: dict[str, Any],
) -> Path:
    """Write weights then manifest (the commit point), then drop superseded weights; returns the manifest path."""
    folder, staging = Path(root) / model.name, Path(root) / STAGING
    folder.mkdir(parents=True, exist_ok=True)
    remove_dead_staging(root)
    tensors = {name: value.detach().contiguous() for name, value in network.state_dict().items()}
    data = safetensors.torch.save(tensors)  # no metadata: its key order varies per process, and so would the sha256
    digest = hashlib.sha256(data).hexdigest()
    weights_file = f"{objective}-{digest[:16]}.safetensors"
    atomic_write(folder / weights_file, data, staging)
    manifest = Manifest(
        model=model.name,
        model_params=model.params.model_dump(),
        objective=objective,
        architecture=network.architecture(),
        training=training,
        training_result=training_result,
        weights=WeightsRecord(file=weights_file, sha256=digest, bytes=len(data)),
        versions=library_versions(),
        metrics=metrics,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    target = manifest_path(root, model.name, objective)
    atomic_write(target, (json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n").encode(), staging)
    for stale in folder.glob(f"{objective}-*.safetensors"):
        if stale.name != weights_file:
            stale.unlink(missing_ok=True)
    return target


def read_manifest(path: Path) -> Manifest:
    try:
        return Manifest.model_validate_json(Path(path).read_bytes())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such manifest") from None
    except ValidationError as error:
        raise ArtifactError(f"{path}: malformed manifest: {error.error_count()} error(s), first: {error.errors()[0]['msg']}") from None


def load_artifact(path: Path) -> Artifact:
    """Load the artifact whose manifest is ``path``, verifying the weights' sha256 first."""
    path = Path(path)
    manifest = read_manifest(path)
    name = manifest.weights.file
    if Path(name).name != name or not name.endswith(".safetensors"):
        raise ArtifactError(f"{path}: weights file name {name!r} must be a plain .safetensors name in the same folder")
    try:
        data = (path.parent / name).read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: weights file {name} is missing") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.weights.sha256:
        raise ArtifactError(f"{path}: checksum mismatch for {name}: manifest says {manifest.weights.sha256[:16]}…, file is {digest[:16]}…")
    try:
        model = build_model(manifest.model, manifest.model_params)
        network = build_network(model, manifest.architecture)
        network.load_state_dict(safetensors.torch.load(data), strict=True)
    except (KeyError, ValueError, TypeError, RuntimeError, ValidationError, safetensors.SafetensorError) as error:
        raise ArtifactError(f"{path}: cannot rebuild the network: {error}") from None
    network.eval().requires_grad_(False)
    return Artifact(manifest, model, network, path)


def discover_artifacts(root: Path) -> tuple[dict[tuple[str, str], Artifact], dict[Path, str]]:
    """Every loadable artifact under ``root`` keyed by (model, objective), and the refused ones with why."""
    loaded: dict[tuple[str, str], Artifact] = {}
    refused: dict[Path, str] = {}
    for path in sorted(Path(root).glob("*/*.json")):
        if path.parent.name.startswith("."):  # .staging: files being written
            continue
        try:
            artifact = load_artifact(path)
        except ArtifactError as error:
            refused[path] = str(error)
            continue
        loaded[(artifact.manifest.model, artifact.manifest.objective)] = artifact
    return loaded, refused
