"""The artifacts the server answers with: verified when loaded, grouped by variant, swapped in whole when they change.

:meth:`Registry.reload` scans the artifacts folder (``<variant>/<objective>.json``),
loads what is new or changed (sha256 verified), drops what was removed, and
then replaces the served set in one assignment. A request holds the
:class:`ServedModel` it started with, so it finishes on that version; the
next one gets the new object. Nothing is silent: every artifact that cannot be
served is listed with its reason in :attr:`Registry.refused` (and
``/health/ready``) and logged once, and a replacement that fails to load
leaves the previous version serving. Who calls ``reload`` when files change:
:mod:`service.reload`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amortized.artifacts import Artifact, ArtifactError, agreeing, load_artifact, manifest_bytes_of, manifest_paths
from amortized.distributions import BranchedNormal
from amortized.mixture import expand_components, view_for
from amortized.models import ConjugateMixtureModel

log = logging.getLogger("service.registry")


@dataclass
class ServedModel:
    """One variant with its compiled networks, and the per-model tables the request path needs.

    Treated as immutable once serving: a change of artifacts builds a new
    ServedModel (the registry swaps it in), so requests in flight keep theirs.

    With a mixture network (K normals per branch, :mod:`amortized.mixture`),
    ``model`` is the model's view through q's (branch, component) pairs, and
    every network's answer is laid out with K normals per branch.
    """

    model: ConjugateMixtureModel
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    name: str = ""  # the variant's name (default: the family's, its default variant)
    components: int = 1  # normals per branch of the variant's richest network (the mixture family)

    def __post_init__(self) -> None:
        self.name = self.name or self.model.name
        # latent value of each branch for the JSON samples: an int array, or Python objects with None where
        # the latent does not exist in a branch (z when k = 1)
        self.branch_values: dict[str, np.ndarray] = {}
        # where a latent may be absent, each branch's JSON text ("0", "null"): the rows (uint8, padded) and lengths
        self.branch_texts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        # the same for the Arrow answer: (value, 0 where absent) as int64, and whether absent, per branch
        self.branch_value_tables: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in self.model.latent_names:
            values = [branch.get(name) for branch in self.model.branches]
            self.branch_values[name] = np.array(values, dtype=object if None in values else np.int64)
            if None in values:
                texts = [b"null" if v is None else str(v).encode() for v in values]
                self.branch_texts[name] = (
                    np.array([list(t.ljust(max(map(len, texts)), b" ")) for t in texts], dtype=np.uint8),
                    np.array([len(t) for t in texts], dtype=np.int64),
                )
            self.branch_value_tables[name] = (
                np.array([0 if v is None else v for v in values], dtype=np.int64),
                np.array([v is None for v in values], dtype=bool),
            )
        self.branch_latents = [dict(branch) for branch in self.model.branches]
        # P(latent = value) columns and their labels for the JSON answer (the model computes the marginals)
        self.value_groups = [
            (name, [str(v) for v in values], columns) for name, values, columns in self.model.latent_values.groups
        ]
        # the request path runs the networks as NumPy functions of y (weights copied once, on first use)
        self._forwards: dict[tuple[str, ...], Callable[[np.ndarray], list[BranchedNormal]]] = {}

    def forward(self, objectives: Sequence[str], y: np.ndarray) -> dict[str, BranchedNormal]:
        """q(. | y) of each objective's network, run together in one NumPy pass where the family allows."""
        key = tuple(sorted(objectives))
        if key not in self._forwards:
            networks = [self.artifacts[objective].network for objective in key]
            self._forwards[key] = type(networks[0]).numpy_stacked(networks)
        qs = dict(zip(key, self._forwards[key](y)))
        for name, q in qs.items():  # a single-normal network beside a mixture one: the same q, K normals per branch
            own = self.artifacts[name].network.components
            if own != self.components:
                qs[name] = expand_components(q, self.components // own)
        return qs

    @property
    def family(self) -> str:
        return self.model.name

    @property
    def objectives(self) -> list[str]:
        return sorted(self.artifacts)

    @property
    def versions(self) -> dict[str, str]:
        """{objective: version} of the networks served (version: the first 16 hex digits of the weights' sha256)."""
        return {objective: self.artifacts[objective].version for objective in self.objectives}


@dataclass(frozen=True)
class Entry:
    """One manifest as last seen: its files' fingerprint, and what loading it gave."""

    fingerprint: tuple
    artifact: Artifact | None
    error: str | None


@dataclass(frozen=True)
class State:
    """What is served, swapped in whole: readers take one reference and see a consistent picture."""

    models: dict[str, ServedModel]
    refused: dict[str, str]
    problem: str | None  # why nothing can be served from the folder, when that is the case


def fingerprint(path: Path) -> tuple | None:
    """(manifest stat, weights stat) or None if the manifest is gone: a change of either means load again.

    Whatever the files hold, this never raises: a link that leads nowhere, a pipe, socket or oversized file, or a
    manifest that is not JSON (nested 2000 deep, Python's parser raises RecursionError) gets a key, and loading
    refuses it with the reason.
    """
    try:
        stat = path.stat()
    except OSError:  # gone; or a link that leads nowhere or loops: the link's own stat, and loading says why
        try:
            stat = path.lstat()
        except OSError:
            return None
    key: tuple = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    try:  # a pipe, socket or oversized file is not read (it could block, or fill memory)
        data = manifest_bytes_of(path)
        weights = path.parent / json.loads(data)["weights"]["file"]
        w = weights.stat()
        return key + ((weights.name, w.st_mtime_ns, w.st_size, w.st_ino),)
    except Exception:  # malformed, unreadable, or weights missing: loading says which
        return key + (None,)


class Registry:
    """Every servable artifact under a folder, grouped by variant; refused ones are logged and listed with why.

    ``prepare(served)`` runs on each newly built ServedModel before it is
    swapped in (the app warms it up there, so the first request after a
    reload does not pay for it).
    """

    def __init__(self, root: Path, prepare: Callable[[ServedModel], None] | None = None) -> None:
        self.root = Path(root)
        self.prepare = prepare
        self._lock = threading.Lock()
        self._entries: dict[Path, Entry] = {}
        self._last_good: dict[Path, Artifact] = {}
        self._state = State({}, {}, None)
        self.reload()

    @property
    def models(self) -> dict[str, ServedModel]:
        return self._state.models

    @property
    def refused(self) -> dict[str, str]:
        return self._state.refused

    @property
    def problem(self) -> str | None:
        return self._state.problem

    @property
    def state(self) -> State:
        return self._state

    @property
    def ready(self) -> bool:
        return bool(self._state.models)

    @property
    def folder(self) -> str:
        return str(self.root.resolve())

    def refusals(self, model: str) -> dict[str, str]:
        """Why each refused artifact in the folder of ``model`` was refused, by its file's stem (the objective)."""
        return {Path(path).stem: reason for path, reason in self.refused.items() if Path(path).parent.name == model}

    def reload(self) -> bool:
        """Scan the folder; load what changed; swap in the new served set. Returns True when what is served changed.

        Safe to call from any thread (one scan at a time); cheap when nothing
        changed (a stat and a small JSON read per manifest).
        """
        with self._lock:
            return self._reload()

    def _reload(self) -> bool:
        paths = manifest_paths(self.root) if self.root.is_dir() else []
        entries: dict[Path, Entry] = {}
        for path in paths:
            key = fingerprint(path)
            if key is None:  # removed between the listing and now
                continue
            previous = self._entries.get(path)
            if previous is not None and previous.fingerprint == key:
                entries[path] = previous
                continue
            try:
                artifact = load_artifact(path)
                entries[path] = Entry(key, artifact, None)
                self._last_good[path] = artifact
            except ArtifactError as error:
                entries[path] = Entry(key, None, str(error))
        for gone in set(self._last_good) - set(entries):
            del self._last_good[gone]
        self._entries = entries

        candidates: list[Artifact] = []
        refused: dict[str, str] = {}
        for path, entry in entries.items():
            if entry.artifact is not None:
                candidates.append(entry.artifact)
                continue
            last_good = self._last_good.get(path)
            if last_good is not None:  # a broken replacement: the version that loaded keeps serving
                candidates.append(last_good)
                refused[str(path)] = f"{entry.error} (still serving the previous version, {last_good.version})"
            else:
                refused[str(path)] = str(entry.error)
        kept, disagreeing = agreeing(candidates)
        for path, why in disagreeing.items():
            refused[str(path)] = f"{refused[str(path)]}; {why}" if str(path) in refused else why

        old = self._state.models
        models: dict[str, ServedModel] = {}
        by_variant: dict[str, dict[str, Artifact]] = {}
        for (variant, objective), artifact in sorted(kept.items()):
            by_variant.setdefault(variant, {})[objective] = artifact
        for variant, artifacts in by_variant.items():
            current = old.get(variant)
            if (
                current is not None
                and current.artifacts.keys() == artifacts.keys()
                and all(current.artifacts[o] is a for o, a in artifacts.items())
            ):
                models[variant] = current
                continue
            # the mixture family: K normals per branch
            k = max(artifact.network.components for artifact in artifacts.values())
            uneven = {o: a for o, a in artifacts.items() if k % a.network.components}
            for artifact in uneven.values():
                refused[str(artifact.path)] = (
                    f"{artifact.network.components} normals per branch do not divide the other network's {k}"
                )
            artifacts = {o: a for o, a in artifacts.items() if o not in uneven}
            served = ServedModel(
                view_for(next(iter(artifacts.values())).model, k), dict(artifacts), variant, components=k
            )
            try:
                if self.prepare is not None:
                    self.prepare(served)
            except Exception as error:  # a network that loads but cannot answer: refused, the previous one stays
                log.exception("warm-up of %s failed", variant)
                for artifact in artifacts.values():
                    refused[str(artifact.path)] = f"{artifact.path}: fails to answer a warm-up query: {error!r}"
                if current is not None:
                    models[variant] = current
                continue
            models[variant] = served

        problem = None
        if not self.root.is_dir():
            problem = f"the artifacts folder {self.folder} does not exist (AMORTIZED_ARTIFACTS_DIR)"
        elif not paths:
            problem = f"the artifacts folder {self.folder} holds no artifacts (<variant>/<objective>.json)"
        elif not models:
            problem = f"no artifact in {self.folder} can be served (see refused)"
        changed = self._log_changes(old, models, refused, problem)
        self._state = State(models, refused, problem)  # the swap: one assignment
        return changed

    def _log_changes(
        self, old: dict[str, ServedModel], new: dict[str, ServedModel], refused: dict[str, str], problem: str | None
    ) -> bool:
        """Log what is newly served, replaced, dropped or refused (each once); True when the served set changed."""
        before = {(v, o): s.artifacts[o].version for v, s in old.items() for o in s.artifacts}
        after = {(v, o): s.artifacts[o].version for v, s in new.items() for o in s.artifacts}
        for key in sorted(before.keys() | after.keys()):
            name = "/".join(key)
            if key not in before:
                log.info("serving %s version %s", name, after[key])
            elif key not in after:
                log.warning("no longer serving %s (version %s): its manifest was removed or refused", name, before[key])
            elif before[key] != after[key]:
                log.info("now serving %s version %s (was %s)", name, after[key], before[key])
        for path, why in refused.items():
            if self._state.refused.get(path) != why:
                log.error("refusing artifact %s: %s", path, why)
        for path in self._state.refused.keys() - refused.keys():
            log.info("no longer refusing %s", path)
        if problem != self._state.problem:
            if problem is not None:
                log.warning("%s; readiness says not ready until something can be served", problem)
            elif self._state.problem is not None:
                log.info("serving from %s", self.folder)
        return before != after or any(old.get(v) is not s for v, s in new.items())
