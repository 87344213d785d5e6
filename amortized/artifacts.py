"""Artifacts: a compiled network on disk, self-describing, checksummed, written atomically.

Layout, one folder per variant ``<root>/<variant>/`` (see :mod:`amortized.variants`):

- ``<objective>.json``: the manifest (variant, family and parameters,
  architecture, training settings, library versions, metrics, and the
  weights' file name and sha256);
- ``<objective>-<sha256[:16]>.safetensors``: the weights (safetensors never
  executes code on load, unlike pickle). The first 16 hex digits of the
  sha256 are the network's *version*, which every answer carries.

A manifest must sit where it says it belongs: in the folder named after its
variant, in the file named after its objective; anything else is refused, so a
copied artifact never stands in for another variant. The artifacts of one
variant must agree on family and parameters: where they do not, the most
recently compiled one (``created_at``) is kept and the others are refused
(:func:`agreeing`), so recompiling a variant with new parameters moves it over
objective by objective, never mixing two models in one answer.

The manifest is the commit point. New weights go to a new, content-addressed
file; only then is the manifest replaced with ``os.replace`` (atomic), and only
after that is the old weights file removed. A crash, Ctrl-C or SIGKILL at any
moment leaves either the old artifact or the new one, complete. Every file is
first written and fsynced under ``<root>/.staging/`` (never a variant folder,
so a writer killed mid-write leaves nothing where the server looks; the next
save removes what dead writers left there), then renamed into place. Loading
reads the weights once, checks their sha256 against the manifest, then parses
those same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import stat
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import numpy
import safetensors
import safetensors.torch
import torch
from pydantic import BaseModel, ValidationError, field_validator, model_validator

import amortized
from amortized.losses import Objective
from amortized.models import ConjugateMixtureModel, build_model
from amortized.networks import InferenceNetwork, build_network
from amortized.training import TrainingConfig
from amortized.variants import check_name

FORMAT_VERSION: Final = 2  # 2: variant and family (1 had "model", the family, whose default variant it was)
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few kB; a larger file is refused unread
VERSION_LENGTH = 16  # hex digits of the weights' sha256 that name a version (as in the weights' file name)


class ArtifactError(Exception):
    """An artifact that cannot be served: missing, malformed, or failing its checksum."""


class WeightsRecord(BaseModel):
    file: str
    sha256: str
    bytes: int


class Manifest(BaseModel):
    """Everything needed to rebuild, audit and judge one compiled network."""

    format_version: Literal[1, 2] = FORMAT_VERSION
    variant: str
    family: str
    model_params: dict[str, Any]
    objective: Objective
    architecture: dict[str, Any]
    training: TrainingConfig
    training_result: dict[str, Any]
    weights: WeightsRecord
    versions: dict[str, str]
    metrics: dict[str, Any]
    created_at: str

    @model_validator(mode="before")
    @classmethod
    def _from_format_1(cls, data: Any) -> Any:
        """Format 1 named the family as ``model``; its variant was the family's default, named after it."""
        if isinstance(data, dict) and data.get("format_version") == 1 and "model" in data:
            data = dict(data)
            model = data.pop("model")
            data.setdefault("variant", model)
            data.setdefault("family", model)
        return data

    @field_validator("variant")
    @classmethod
    def _valid_name(cls, variant: str) -> str:
        return check_name(variant)

    @property
    def version(self) -> str:
        """The network's version: the first hex digits of its weights' sha256."""
        return self.weights.sha256[:VERSION_LENGTH]


@dataclass(frozen=True)
class Artifact:
    manifest: Manifest
    model: ConjugateMixtureModel
    network: InferenceNetwork
    path: Path

    @property
    def variant(self) -> str:
        return self.manifest.variant

    @property
    def objective(self) -> str:
        return self.manifest.objective

    @property
    def version(self) -> str:
        return self.manifest.version


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "amortized": amortized.__version__,
    }


STAGING = ".staging"  # under an artifacts root: files being written (a dot folder: manifest_paths skips it)


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


def manifest_path(root: Path, variant: str, objective: str) -> Path:
    return Path(root) / variant / f"{objective}.json"


def manifest_bytes(manifest: Manifest | dict[str, Any]) -> bytes:
    """A manifest as written: indented JSON, fields in the model's order, one newline at the end."""
    data = manifest.model_dump(mode="json") if isinstance(manifest, Manifest) else manifest
    return (json.dumps(data, indent=2) + "\n").encode()


def save_artifact(
    root: Path,
    model: ConjugateMixtureModel,
    network: InferenceNetwork,
    objective: Objective,
    training: TrainingConfig,
    training_result: dict[str, Any],
    metrics: dict[str, Any],
    variant: str | None = None,
) -> Path:
    """Write weights then manifest (the commit point), then drop superseded weights; returns the manifest path.

    ``variant`` names the folder and the manifest's variant (default: the family's name, its default variant).
    """
    variant = check_name(variant or model.name)
    folder, staging = Path(root) / variant, Path(root) / STAGING
    folder.mkdir(parents=True, exist_ok=True)
    remove_dead_staging(root)
    tensors = {name: value.detach().contiguous() for name, value in network.state_dict().items()}
    data = safetensors.torch.save(tensors)  # no metadata: its key order varies per process, and so would the sha256
    digest = hashlib.sha256(data).hexdigest()
    weights_file = f"{objective}-{digest[:VERSION_LENGTH]}.safetensors"
    atomic_write(folder / weights_file, data, staging)
    manifest = Manifest(
        variant=variant,
        family=model.name,
        model_params=model.params.model_dump(),
        objective=objective,
        architecture=network.architecture(),
        training=training,
        training_result=training_result,
        weights=WeightsRecord(file=weights_file, sha256=digest, bytes=len(data)),
        versions=library_versions(),
        metrics=metrics,
        created_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
    )
    target = manifest_path(root, variant, objective)
    atomic_write(target, manifest_bytes(manifest), staging)
    for stale in folder.glob(f"{objective}-*.safetensors"):
        if stale.name != weights_file:
            stale.unlink(missing_ok=True)
    return target


def read_regular_file(path: Path, max_bytes: int | None = None, what: str = "a manifest may hold") -> bytes:
    """The bytes of ``path`` if it is a regular file (a symbolic link to one counts); ArtifactError otherwise.

    Opened without blocking and checked on the open descriptor: a named pipe,
    a device or a socket dropped into the artifacts folder is refused at once
    instead of hanging the reader (opening a FIFO for reading waits for a
    writer), and so is a file that cannot be opened (a socket, a symbolic link
    loop, no permission) or, with ``max_bytes``, one larger than that (read
    whole on every rescan, a 512 MB file took the worker past its memory
    limit). Raises FileNotFoundError when there is no such file.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as error:  # a socket (ENXIO: no such device or address), a link loop, no permission
        raise ArtifactError(
            f"{path}: cannot be opened ({error.strerror or error}; not a readable regular file)"
        ) from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            kind = "a directory" if stat.S_ISDIR(status.st_mode) else "not a regular file (a pipe, device or socket)"
            raise ArtifactError(f"{path}: {kind}")
        if max_bytes is not None and status.st_size > max_bytes:
            raise ArtifactError(f"{path}: {status.st_size} bytes, more than {what} ({max_bytes})")
        os.set_blocking(descriptor, True)
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            return handle.read()
    except OSError as error:
        raise ArtifactError(f"{path}: cannot be read ({error.strerror or error})") from None
    finally:
        os.close(descriptor)


def manifest_bytes_of(path: Path) -> bytes:
    """A manifest file's bytes, unparsed: :func:`read_regular_file` within :data:`MAX_MANIFEST_BYTES`."""
    return read_regular_file(Path(path), MAX_MANIFEST_BYTES)


def read_manifest(path: Path) -> Manifest:
    try:
        return Manifest.model_validate_json(manifest_bytes_of(path))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such manifest") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ArtifactError(
            f"{path}: malformed manifest: {error.error_count()} error(s), first: "
            f"{where + ': ' if where else ''}{first['msg']}"
        ) from None


def check_layout(path: Path, manifest: Manifest) -> None:
    """A manifest must be ``<variant>/<objective>.json``: a copy elsewhere never stands in for another variant."""
    if path.name != f"{manifest.objective}.json":
        raise ArtifactError(
            f"{path}: the file holds the {manifest.objective} network; a manifest is named <objective>.json"
        )
    if path.parent.name != manifest.variant:
        raise ArtifactError(
            f"{path}: folder {path.parent.name!r} holds an artifact of variant {manifest.variant!r}; a variant's "
            "artifacts live in "
            f"the folder named after it (move it to {manifest.variant}/, or recompile it with --name "
            f"{path.parent.name})"
        )


def check_architecture(path: Path, model: Any, architecture: dict[str, Any], weights: Path) -> None:
    """ArtifactError unless the architecture's tensors have the shapes the weights file holds, before any is made.

    The network is built on torch's ``meta`` device (shapes, no memory) and compared with the shapes in the
    weights' header (safetensors' ``safe_open`` reads the header alone): a manifest whose ``hidden`` said 12000
    units was built in full, 1.1 GB and seconds of CPU, before ``load_state_dict`` refused it.
    """
    with torch.device("meta"):
        skeleton = build_network(model, architecture)
    expected = {key: tuple(tensor.shape) for key, tensor in skeleton.state_dict().items()}
    with safetensors.safe_open(str(weights), framework="pt") as stored:
        found = {key: tuple(stored.get_slice(key).get_shape()) for key in stored.keys()}  # noqa: SIM118
    if expected == found:
        return

    def shape(dims: tuple[int, ...] | None) -> str:
        return "absent" if dims is None else "x".join(map(str, dims)) or "a scalar"

    key = next(k for k in sorted(expected.keys() | found.keys()) if expected.get(k) != found.get(k))
    raise ArtifactError(
        f"{path}: the architecture {architecture} does not match the weights: {key} is "
        f"{shape(expected.get(key))} in the architecture, {shape(found.get(key))} in {weights.name}"
    )


def load_artifact(path: Path) -> Artifact:
    """Load the artifact whose manifest is ``path``, verifying its place and the weights' sha256 first."""
    path = Path(path)
    manifest = read_manifest(path)
    check_layout(path, manifest)
    name = manifest.weights.file
    if Path(name).name != name or not name.endswith(".safetensors"):
        raise ArtifactError(f"{path}: weights file name {name!r} must be a plain .safetensors name in the same folder")
    try:
        data = read_regular_file(path.parent / name, manifest.weights.bytes, "the manifest says the weights hold")
    except FileNotFoundError:
        raise ArtifactError(f"{path}: weights file {name} is missing") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.weights.sha256:
        raise ArtifactError(
            f"{path}: checksum mismatch for {name}: manifest says {manifest.weights.sha256[:16]}…, file is "
            f"{digest[:16]}…"
        )
    try:
        model = build_model(manifest.family, manifest.model_params)
        check_architecture(path, model, manifest.architecture, path.parent / name)
        network = build_network(model, manifest.architecture)
        network.load_state_dict(safetensors.torch.load(data), strict=True)
    except ArtifactError:
        raise
    except Exception as error:  # anything a file's contents can make the model or network raise refuses this one only
        raise ArtifactError(f"{path}: cannot rebuild the network: {type(error).__name__}: {error}") from None
    network.eval().requires_grad_(False)
    return Artifact(manifest, model, network, path)


def manifest_paths(root: Path) -> list[Path]:
    """Every candidate manifest under ``root``: ``*/*.json``, hidden names (staging files) excepted."""
    return sorted(
        p for p in Path(root).glob("*/*.json") if not p.name.startswith(".") and not p.parent.name.startswith(".")
    )


def _compiled_at(artifact: Artifact) -> tuple[datetime, str]:
    try:
        when = datetime.fromisoformat(artifact.manifest.created_at)
    except ValueError:
        when = datetime.min
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when, artifact.manifest.objective


def agreeing(artifacts: list[Artifact]) -> tuple[dict[tuple[str, str], Artifact], dict[Path, str]]:
    """Keyed by (variant, objective), the artifacts whose variant agrees on family and parameters; the others with why.

    Within a variant the most recently compiled artifact sets the family and
    parameters (ties: the later objective name), and any other artifact of it
    that differs is refused.
    """
    by_variant: dict[str, list[Artifact]] = {}
    for artifact in artifacts:
        by_variant.setdefault(artifact.variant, []).append(artifact)
    kept: dict[tuple[str, str], Artifact] = {}
    refused: dict[Path, str] = {}
    for variant, group in sorted(by_variant.items()):
        newest = max(group, key=_compiled_at)
        for artifact in sorted(group, key=lambda a: a.objective):
            if (artifact.manifest.family, artifact.model.params) == (newest.manifest.family, newest.model.params):
                kept[(variant, artifact.objective)] = artifact
            else:
                refused[artifact.path] = (
                    f"{artifact.path}: family or parameters differ from {newest.path.name} of the same variant, "
                    "compiled later "
                    f"({newest.manifest.created_at}): recompile {artifact.objective} with the same ones, or remove it"
                )
    return kept, refused


def discover_artifacts(
    root: Path, variants: set[str] | None = None
) -> tuple[dict[tuple[str, str], Artifact], dict[Path, str]]:
    """Every loadable artifact under ``root`` keyed by (variant, objective), and the refused ones with why.

    ``variants``: only the artifacts in those variants' folders (one job's figures need not load the others).
    """
    loaded: list[Artifact] = []
    refused: dict[Path, str] = {}
    for path in manifest_paths(root):
        if variants is not None and path.parent.name not in variants:
            continue
        try:
            loaded.append(load_artifact(path))
        except ArtifactError as error:
            refused[path] = str(error)
    kept, disagreeing = agreeing(loaded)
    return kept, {**refused, **disagreeing}


def upgrade_manifest(path: Path) -> bool:
    """Rewrite a format-1 manifest as format 2 (variant and family), atomically; the weights are untouched.

    Returns True when the file changed. The upgraded manifest must load
    (sha256 verified) or the file is left as it was.
    """
    path = Path(path)
    original = path.read_bytes()
    data = json.loads(original)
    if data.get("format_version") != 1:
        return False
    model = data.pop("model")
    upgraded = {"format_version": FORMAT_VERSION, "variant": model, "family": model}
    upgraded.update((key, value) for key, value in data.items() if key != "format_version")
    try:
        check_layout(path, Manifest.model_validate(upgraded))
    except ValidationError as error:
        raise ArtifactError(f"{path}: cannot upgrade: {error}") from None
    staging = path.parent.parent / STAGING  # <root>/.staging
    atomic_write(path, manifest_bytes(upgraded), staging)
    try:
        load_artifact(path)
    except ArtifactError:
        atomic_write(path, original, staging)
        raise
    return True
