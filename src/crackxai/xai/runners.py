"""Where explanations run: `local` (this process) or `ray` (an actor pool on a Ray cluster).

Both take the same job and give the same maps, in input order:

    result = explain_maps(runner, job, rows, targets, ray_address=None, num_actors=2)
    result.maps, result.seconds, result.evals     # per row, in the order of `rows`

A `Job` names everything by path or value, never by object: the saved model, the .npy image
array (memory-mapped; an image is its row in it), the method and its settings. Each Ray actor
loads the model and builds the explainer once, then explains the rows sent to it, one image per
call as the local runner does, so seeded methods (SHAP, LIME) give the same maps. Ray returns
batches in any order: every map carries its row and is put back in place.

The Ray plumbing (the cluster, the actor pool, the order) is crackxai.core.ray_pool's, shared
with `crackxai inspect --runner ray`. Ray is optional (`uv sync --group ray`); it is imported only
when `runner="ray"`. Without `ray_address` a private local cluster is started and stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crackxai.core.errors import CrackxaiError
from crackxai.core.ray_pool import import_ray, in_order, map_in_order, ray_cluster
from crackxai.xai.base import Explainer
from crackxai.xai.options import RUNNERS

__all__ = ["Job", "MapWorker", "Precomputed", "Result", "explain_maps", "import_ray", "in_order",
           "ray_cluster"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One method over rows of one image array, everything by path or value (picklable)."""

    model_path: str
    images_path: str  # .npy (N, H, W, 3) uint8
    method: str
    settings: dict[str, Any] = field(default_factory=dict)  # registry.create's keyword arguments
    layer: str | None = None
    batch_size: int = 64  # the Predictor's
    seed: int = 0  # keras.utils.set_random_seed before building the explainer


class MapWorker:
    """Loads the model and builds the explainer once; then maps for {"row", "target"} batches.
    The local runner uses one in-process; the Ray runner one per actor."""

    def __init__(self, job: Job):
        import keras

        from crackxai.models.io import load_model
        from crackxai.models.predictor import Predictor
        from crackxai.xai import registry

        keras.utils.set_random_seed(job.seed)
        model = load_model(job.model_path)
        predictor = Predictor(model, batch_size=job.batch_size)
        self.explainer = registry.create(job.method, model=model, predictor=predictor,
                                         layer=job.layer, **job.settings)
        self.images = np.load(job.images_path, mmap_mode="r")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = np.asarray(batch["row"], dtype=np.int64)
        maps, seconds, evals = [], [], []
        for r, t in zip(rows, batch["target"], strict=True):
            m, s, e = self.explainer.explain_with_cost(np.asarray(self.images[r])[None], [int(t)])
            maps.append(m[0])
            seconds.append(s)
            evals.append(e)
        return {"row": rows, "map": np.stack(maps), "seconds": np.asarray(seconds, np.float64),
                "evals": np.asarray(evals, np.int64)}


@dataclass(frozen=True)
class Result:
    """Per row, in the order asked for: maps (N, H, W) float32, the wall seconds and model
    evaluations each took where it ran (as Explainer.explain_with_cost counts them)."""

    maps: np.ndarray
    seconds: np.ndarray
    evals: np.ndarray


def explain_maps(runner: str, job: Job, rows: np.ndarray | list[int],
                 targets: np.ndarray | list[int], ray_address: str | None = None,
                 num_actors: int = 2) -> Result:
    """The maps of `job.method` for image `rows[i]` and class `targets[i]`, one image per call."""
    if runner not in RUNNERS:
        raise CrackxaiError(f"Unknown runner '{runner}': use one of {', '.join(RUNNERS)}.")
    rows, targets = np.asarray(rows, np.int64), np.asarray(targets, np.int64)
    if runner == "local":
        out = MapWorker(job)({"row": rows, "target": targets})
    else:
        out = _explain_ray(job, rows, targets, ray_address, num_actors)
    order = in_order(rows, out["row"])
    return Result(out["map"][order].astype(np.float32), out["seconds"][order],
                  out["evals"][order])


class Precomputed(Explainer):
    """Hands out a runner's maps (and their cost) as an Explainer, so the scoring code that
    calls `explain_with_cost` one image at a time is the same for every runner. Looked up by the
    image's bytes and the target."""

    def __init__(self, like: Explainer, images: np.ndarray, targets: np.ndarray, result: Result):
        super().__init__(like.model, like.predictor, seed=like.seed)
        self.name, self.uses_gradients = like.name, like.uses_gradients
        self.stochastic = like.stochastic
        self._found = {(np.asarray(im).tobytes(), int(t)): i
                       for i, (im, t) in enumerate(zip(images, targets, strict=True))}
        self._result = result
        self._like = like  # explains what the runner did not

    def _index(self, images: np.ndarray, targets: np.ndarray) -> list[int]:
        try:
            return [self._found[(np.asarray(im).tobytes(), int(t))]
                    for im, t in zip(images, targets, strict=True)]
        except KeyError:
            raise CrackxaiError(f"{self.name}: asked for an image the runner did not "
                                "explain.") from None

    def covers(self, images: np.ndarray, targets: np.ndarray) -> bool:
        return all((np.asarray(im).tobytes(), int(t)) in self._found
                   for im, t in zip(images, targets, strict=True))

    def _explain(self, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        if not self.covers(images, targets):  # a rerun's images: explained here
            return self._like.explain(images, targets)
        return self._result.maps[self._index(images, targets)]

    def explain_with_cost(self, images, targets):  # noqa: ANN001 - as the base class
        if not self.covers(images, targets):
            return self._like.explain_with_cost(images, targets)
        index = self._index(images, targets)
        return self.explain(images, targets), float(self._result.seconds[index].sum()), \
            int(self._result.evals[index].sum())


def _explain_ray(job: Job, rows: np.ndarray, targets: np.ndarray, address: str | None,
                 num_actors: int) -> dict[str, np.ndarray]:
    items = [{"row": int(r), "target": int(t)} for r, t in zip(rows, targets, strict=True)]
    with ray_cluster(address) as ray:
        return map_in_order(ray, MapWorker, {"job": job}, items, key="row",
                            num_actors=num_actors)
