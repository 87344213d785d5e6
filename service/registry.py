"""The artifacts the server answers with: loaded and verified once, at start."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amortized.artifacts import Artifact, discover_artifacts
from amortized.distributions import BranchedNormal
from amortized.mixture import expand_components, view_for
from amortized.models import ConjugateMixtureModel

log = logging.getLogger("service.registry")


@dataclass
class ServedModel:
    """One model with its compiled networks, and the per-model tables the request path needs.

    With a mixture network (K normals per branch, :mod:`amortized.mixture`),
    ``model`` is the model's view through q's (branch, component) pairs, and
    every network's answer is laid out with K normals per branch.
    """

    model: ConjugateMixtureModel
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    components: int = 1

    def __post_init__(self) -> None:
        # latent value of each branch for the JSON samples: an int array, or Python objects with None where
        # the latent does not exist in a branch (z when k = 1)
        self.latent_values: dict[str, np.ndarray] = {}
        for name in self.model.latent_names:
            values = [branch.get(name) for branch in self.model.branches]
            self.latent_values[name] = np.array(values, dtype=object if None in values else np.int64)
        self.branch_latents = [dict(branch) for branch in self.model.branches]
        # P(latent = value) for every (latent, value) at once: branch probabilities times this (branches x values),
        # summed per row; each latent's values and their columns
        members = self.model.latent_value_members
        columns = [m.numpy().astype(np.float64) for values in members.values() for m in values.values()]
        self.value_matrix = np.stack(columns, -1) if columns else np.zeros((self.model.num_branches, 0))
        self.value_groups: list[tuple[str, list[str], slice]] = []
        start = 0
        for name, values in members.items():
            self.value_groups.append((name, [str(value) for value in values], slice(start, start + len(values))))
            start += len(values)
        # the request path runs the networks as NumPy functions of y (weights copied once, on first use)
        self._forwards: dict[tuple[str, ...], Callable[[np.ndarray], list[BranchedNormal]]] = {}

    def add(self, objective: str, artifact: Artifact) -> None:
        self.artifacts[objective] = artifact
        self._forwards.clear()

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
    def objectives(self) -> list[str]:
        return sorted(self.artifacts)


class Registry:
    """Every loadable artifact under a folder, grouped by model; refused ones are logged and listed."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        loaded, refused = discover_artifacts(self.root)
        self.refused = {str(path): reason for path, reason in refused.items()}
        for path, reason in self.refused.items():
            log.error("refusing artifact %s: %s", path, reason)
        self.models: dict[str, ServedModel] = {}
        components: dict[str, int] = {}  # normals per branch of each model's richest network
        for (name, _), artifact in loaded.items():
            components[name] = max(components.get(name, 1), artifact.network.components)
        for (name, objective), artifact in sorted(loaded.items()):
            k = components[name]
            if k % artifact.network.components:
                self.refused[str(artifact.path)] = f"{artifact.network.components} normals per branch do not divide the other network's {k}"
                log.error("refusing artifact %s: %s", artifact.path, self.refused[str(artifact.path)])
                continue
            served = self.models.setdefault(name, ServedModel(view_for(artifact.model, k), components=k))
            if artifact.model.params != served.model.params:
                self.refused[str(artifact.path)] = "model parameters differ from the other artifact of this model"
                log.error("refusing artifact %s: %s", artifact.path, self.refused[str(artifact.path)])
                continue
            served.add(objective, artifact)
            log.info("serving %s/%s (sha256 %s…)", name, objective, artifact.manifest.weights.sha256[:12])

    @property
    def ready(self) -> bool:
        return bool(self.models)
