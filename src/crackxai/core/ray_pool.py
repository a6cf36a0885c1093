"""A Ray actor pool that maps keyed items and hands the results back in input order: the Ray
plumbing shared by the explain stage's runner (crackxai.xai.runners) and `crackxai inspect`.

    with ray_cluster(address) as ray:
        for row in imap_in_order(ray, Worker, {"job": job}, items, key="id", num_actors=2):
            ...                                   # one result row per item, in input order

`Worker(**kwargs)` is built once per actor (it loads the model there, from a path: nothing heavy
travels); it is then called with one-item numpy batches ({column: array of 1}) and returns a batch
that carries the item's `key` back. Ray returns batches in any order: `imap_in_order` puts them
back in the order of `items` as they arrive and checks every key came back exactly once
(`map_in_order`: the same, stacked into columns).

Ray is optional (`uv sync --group ray`); it is imported only when a cluster is asked for. Without
`address` a private local cluster is started with its temp files in a private temp folder, without
the dashboard, usage reporting or a token file, and stopped afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from crackxai.core.errors import CrackxaiError

# how each caller names the choice, for the missing-Ray error
EXPLAIN_OPTION = ("explain.runner=ray", "explain.runner=local")


def import_ray(option: tuple[str, str] = EXPLAIN_OPTION) -> Any:
    """`import ray`, or the one-paragraph error naming the install command; `option` is (the
    setting that asked for Ray, the setting that does without)."""
    try:
        import ray
    except ImportError:
        raise CrackxaiError(
            f"{option[0]} needs Ray, an optional dependency group not in the default install. "
            "Install it with `uv sync --group ray` (or `make setup RAY=1`), or use "
            f"{option[1]}.") from None
    return ray


@contextlib.contextmanager
def ray_cluster(address: str | None, num_cpus: int | None = None,
                option: tuple[str, str] = EXPLAIN_OPTION) -> Iterator[Any]:
    """Connected to the cluster at `address` (left running), or to a private local one started
    and stopped here: temp files in its own folder, no dashboard, no usage report, no ~/.ray
    token file. Inside an existing `ray.init` of the caller's, that connection is used."""
    if address:
        ray = import_ray(option)
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
        ray = import_ray(option)
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


def in_order(keys: np.ndarray, got_keys: np.ndarray) -> np.ndarray:
    """Indices into `got_keys` that put it in the order of `keys`; every key exactly once."""
    position = {int(k): i for i, k in enumerate(got_keys)}
    if sorted(position) != sorted(int(k) for k in keys) or len(position) != len(got_keys):
        raise CrackxaiError(f"The Ray actors returned results for {sorted(position)} but "
                            f"{sorted(int(k) for k in keys)} were asked for.")
    return np.array([position[int(k)] for k in keys], dtype=np.int64)


def imap_in_order(ray: Any, worker: type, worker_kwargs: dict[str, Any],
                  items: list[dict[str, Any]], key: str,
                  num_actors: int) -> Iterator[dict[str, Any]]:
    """`worker` on every item, one item per call, on a pool of `num_actors` actors of the
    connected cluster; yields one result row ({column: value}) per item, in the order of `items`
    (matched by `key`, an integer every item and every returned batch carries), each as soon as
    it and all before it are back: a long run keeps only the out-of-order rows waiting."""
    if not items:
        return
    keys = [int(item[key]) for item in items]
    if len(set(keys)) != len(keys):
        raise CrackxaiError(f"The items sent to the Ray actors repeat a '{key}': {keys}.")
    cpus = float(ray.cluster_resources().get("CPU", 1))
    # Fractional CPUs: actors that take every CPU leave none for the read task (a hang on a
    # 2-CPU node). One block per item, so every actor gets work.
    per_actor = max(0.1, min(1.0, (cpus - 0.5) / num_actors))
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    out = ds.map_batches(worker, fn_constructor_kwargs=worker_kwargs, batch_size=1,
                         batch_format="numpy", num_cpus=per_actor,
                         compute=ray.data.ActorPoolStrategy(size=num_actors))
    waiting: dict[int, dict[str, Any]] = {}
    expected = set(keys)
    nxt = 0
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        for i, k in enumerate(np.asarray(batch[key]).tolist()):
            if k not in expected or k in waiting:
                raise CrackxaiError(f"The Ray actors returned a result for {key} {k}, which was "
                                    f"not asked for or came twice (asked for: {sorted(keys)}).")
            waiting[k] = {c: v[i] for c, v in batch.items()}
            expected.discard(k)
        while nxt < len(keys) and keys[nxt] in waiting:
            yield waiting.pop(keys[nxt])
            nxt += 1
    if nxt < len(keys):
        raise CrackxaiError(f"The Ray actors returned no result for {key}(s) "
                            f"{sorted(expected | set(waiting))} of {sorted(keys)}.")


def map_in_order(ray: Any, worker: type, worker_kwargs: dict[str, Any],
                 items: list[dict[str, Any]], key: str, num_actors: int) -> dict[str, np.ndarray]:
    """`imap_in_order`'s rows stacked into columns, in the order of `items`."""
    rows = list(imap_in_order(ray, worker, worker_kwargs, items, key, num_actors))
    if not rows:
        raise CrackxaiError("Nothing was sent to the Ray actors: the list of items is empty.")
    return {c: np.stack([r[c] for r in rows]) for c in rows[0]}
