"""Where explanations run: `local` (this process) or `ray` (an actor pool on a Ray cluster).

Both take the same job and give the same maps, in input order:

    result = explain_maps(runner, job, rows, targets, ray_address=None, num_actors=2)
    result.maps, result.seconds, result.evals     # per row, in the order of `rows`

A `Job` names everything by path or value, never by object: the saved model, the .npy image
array (memory-mapped; an image is its row in it), the method and its settings. Each Ray actor
loads the model and builds the explainer once, then explains the rows sent to it, one image per
call as the local runner does, so seeded methods (SHAP, LIME) give the same maps. Ray returns
batches in any order: every map carries its row and is put back in place.

Ray is optional (`uv sync --group ray`); it is imported only when `runner="ray"`. Without
`ray_address` a local cluster is started with its temp files in a private temp folder, without
the dashboard or usage reporting, and stopped afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crackxai.core.errors import CrackxaiError
from crackxai.xai.base import Explainer
from crackxai.xai.options import RUNNERS

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


def in_order(rows: np.ndarray, got_rows: np.ndarray) -> np.ndarray:
    """Indices into `got_rows` that put it in the order of `rows`; every row exactly once."""
    position = {int(r): i for i, r in enumerate(got_rows)}
    if sorted(position) != sorted(int(r) for r in rows) or len(position) != len(got_rows):
        raise CrackxaiError(f"The runner returned maps for rows {sorted(position)} but "
                            f"{sorted(int(r) for r in rows)} were asked for.")
    return np.array([position[int(r)] for r in rows], dtype=np.int64)


class Precomputed(Explainer):
    """Hands out a runner's maps (and their cost) as an Explainer, so the scoring code that
    calls `explain_with_cost` one image at a time is the same for every runner. Looked up by the
    image's bytes and the target."""

    def __init__(self, like: Explainer, images: np.ndarray, targets: np.ndarray, result: Result):
        super().__init__(like.model, like.predictor, seed=like.seed)
        self.name, self.uses_gradients = like.name, like.uses_gradients
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


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise CrackxaiError(
            "explain.runner=ray needs Ray, an optional dependency group not in the default "
            "install. Install it with `uv sync --group ray` (or `make setup RAY=1`), or use "
            "explain.runner=local.") from None
    return ray


@contextlib.contextmanager
def ray_cluster(address: str | None, num_cpus: int | None = None) -> Iterator[Any]:
    """Connected to the cluster at `address` (left running), or to a private local one started
    and stopped here: temp files in its own folder, no dashboard, no usage report, no ~/.ray
    token file. Inside an existing `ray.init` of the caller's, that connection is used."""
    if address:
        ray = import_ray()
        if ray.is_initialized():  # the caller's own connection, used as it is
            yield ray
            return
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()  # disconnects; the cluster keeps running
        return
    # A private local cluster on this machine, gone when the job ends: no token file under
    # ~/.ray (Ray >= 2.59 writes one for local clusters), no usage report, and the workers run
    # this Python as it is (under `uv run` Ray would otherwise re-create the environment with
    # `uv run` from a packaged copy of the working folder). Ray reads these when first
    # imported: a process that imported ray before keeps its own settings.
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        ray = import_ray()
        if ray.is_initialized():
            yield ray
            return
        with tempfile.TemporaryDirectory(prefix="crackxai-ray-") as tmp:
            ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=tmp,
                     logging_level=logging.WARNING, log_to_driver=False)
            try:
                yield ray
            finally:
                ray.shutdown()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _explain_ray(job: Job, rows: np.ndarray, targets: np.ndarray, address: str | None,
                 num_actors: int) -> dict[str, np.ndarray]:
    with ray_cluster(address) as ray:
        cpus = float(ray.cluster_resources().get("CPU", 1))
        # Fractional CPUs: actors that take every CPU leave none for the read task (a hang on
        # a 2-CPU node). One block per image, so every actor gets work.
        per_actor = max(0.1, min(1.0, (cpus - 0.5) / num_actors))
        items = [{"row": int(r), "target": int(t)} for r, t in zip(rows, targets, strict=True)]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        out = ds.map_batches(MapWorker, fn_constructor_kwargs={"job": job}, batch_size=1,
                             batch_format="numpy", num_cpus=per_actor,
                             compute=ray.data.ActorPoolStrategy(size=num_actors))
        batches = list(out.iter_batches(batch_size=None, batch_format="numpy"))
    return {k: np.concatenate([b[k] for b in batches]) for k in ("row", "map", "seconds", "evals")}
