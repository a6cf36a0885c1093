"""Predicting a stream of image groups (e.g. the tiles of one photo after another) in full batches.

A photo of 12 tiles and a batch size of 64 would waste most of a batch, and a photo of 70 tiles
would leave a batch of 6: instead, consecutive groups share batches, so every call but the last
gets exactly `batch_size` images, and each group's probabilities come back, in order, as soon as
its last image has been through the model.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np

K = TypeVar("K")


def predict_groups(predict: Callable[[np.ndarray], np.ndarray],
                   groups: Iterable[tuple[K, np.ndarray]],
                   batch_size: int) -> Iterator[tuple[K, np.ndarray]]:
    """For each (key, images (n, H, W, 3)) of `groups`, in order, yield (key, predict(images))
    ((n, C); a group of 0 images yields (0, 0) when its turn comes), calling `predict` on full
    batches of `batch_size` images taken across consecutive groups (the last may be short)."""
    pending: deque[tuple[K, int, list[np.ndarray]]] = deque()  # key, images, outputs so far
    queued: list[np.ndarray] = []  # images not yet predicted, in group order
    n_queued = 0

    def run(n: int) -> None:
        nonlocal queued, n_queued
        block = np.concatenate(queued) if len(queued) > 1 else queued[0]
        queued = [block[n:]] if n < len(block) else []
        n_queued -= n
        out = np.asarray(predict(block[:n]))
        for _, need, outputs in pending:  # hand the outputs to the groups they belong to
            have = sum(len(o) for o in outputs)
            take = min(need - have, len(out))
            if take:
                outputs.append(out[:take])
                out = out[take:]
            if not len(out):
                break

    def ready() -> Iterator[tuple[K, np.ndarray]]:
        while pending and sum(len(o) for o in pending[0][2]) == pending[0][1]:
            key, need, outputs = pending.popleft()
            yield key, (np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32))

    for key, images in groups:
        pending.append((key, len(images), []))
        if len(images):
            queued.append(np.asarray(images))
            n_queued += len(images)
        while n_queued >= batch_size:
            run(batch_size)
        yield from ready()
    if n_queued:
        run(n_queued)
    yield from ready()
