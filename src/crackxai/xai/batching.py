"""Full model batches across images: for methods that make their perturbed images themselves, and
for libraries that call the model themselves (SHAP's Partition explainer, LIME).

`predict_stream` sends a stream of perturbed images (cut however is convenient: one image, one
channel slice) to the predictor in full batches. `Lockstep` runs one library call per image side
by side: each runs until it calls the model, and when all have, their requests go to the
predictor as one stream, so the model sees all the images' masks together (8 images x 50 masks
instead of 50). Only one call runs Python at a time, in a fixed order, each with its own NumPy
global RNG state (swapped in and out at every model call): SHAP breaks ties with that RNG, so each
image gets exactly the draws, and the map, it gets when explained alone.

A call may also request a lazy sequence of images (len() and [i] -> one (H, W, 3) image) instead
of an array: the lockstep then makes them in a thread pool, ahead of the model, while the model
evaluates the ones already made. SHAP's image masker hands its masks on this way, so its
inpainting (OpenCV, which releases the GIL) overlaps the model instead of taking turns with it.
"""

from __future__ import annotations

import abc
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]
T = TypeVar("T")


def predict_stream(predict: Predict, chunks: Iterable[np.ndarray], batch_size: int) -> np.ndarray:
    """`predict` of the concatenated `chunks` (N, H, W, 3), called on full batches of
    `batch_size` images only (and once on the rest), however the chunks are cut."""
    outputs: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    n_pending = 0
    for chunk in chunks:
        pending.append(chunk)
        n_pending += len(chunk)
        if n_pending >= batch_size:
            batch = np.concatenate(pending)
            full = len(batch) - len(batch) % batch_size
            outputs.append(np.asarray(predict(batch[:full])))
            pending, n_pending = [batch[full:]], len(batch) - full
    if n_pending:
        outputs.append(np.asarray(predict(np.concatenate(pending))))
    return np.concatenate(outputs)


class LazyImages(abc.ABC):
    """Images made on demand, for a lockstep model call: len() of them, [i] makes image i."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, i: int) -> np.ndarray:
        """Image i, (H, W, 3). Called from the lockstep's threads, several at once."""


def _chunks(requests: Sequence[Any], pool: ThreadPoolExecutor) -> Iterator[np.ndarray]:
    """The requests' images in order: arrays as they are; every lazy image submitted to the pool
    at once (so it runs ahead), each taken as it is made."""
    made = [pool.map(r.__getitem__, range(len(r))) if isinstance(r, LazyImages) else None
            for r in requests]
    for request, images in zip(requests, made, strict=True):
        if images is None:
            yield request
        else:
            for image in images:
                yield np.asarray(image)[None]


class _Job(threading.Thread):
    """One library call in its own thread, run only while it holds the turn."""

    def __init__(self, work: Callable[[Predict], Any], rng_state: Any, yielded: threading.Event):
        super().__init__(daemon=True)
        self.work, self.rng_state, self.yielded = work, rng_state, yielded
        self.go = threading.Event()
        self.request: np.ndarray | LazyImages | None = None
        self.reply: np.ndarray | BaseException | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = False

    def _take_turn(self) -> None:
        self.go.wait()
        self.go.clear()
        np.random.set_state(self.rng_state)

    def _give_turn(self) -> None:
        self.rng_state = np.random.get_state()
        self.yielded.set()

    def predict(self, x: Any) -> np.ndarray:
        """The model function handed to the library: waits for the round's joint evaluation.
        `x`: images (N, H, W, 3), or a lazy sequence of them (see the module docstring)."""
        self.request = x if isinstance(x, LazyImages) else np.asarray(x)
        self._give_turn()
        self._take_turn()
        reply, self.reply, self.request = self.reply, None, None
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def run(self) -> None:
        self._take_turn()
        try:
            self.result = self.work(self.predict)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            self.error = error
        finally:
            self.finished = True
            self._give_turn()


def lockstep(works: Sequence[Callable[[Predict], T]], predict: Predict, batch_size: int) -> list[T]:
    """[work(model_fn) for work in works], run side by side so that the model calls of all of them
    are answered together, through `predict` in full batches of `batch_size`. Each work gets the
    NumPy global RNG state the caller has now, as if it ran alone; the caller's state is restored
    after. The first error (in order) is raised once all have stopped."""
    caller_state = np.random.get_state()
    yielded = threading.Event()
    jobs = [_Job(work, caller_state, yielded) for work in works]
    pool = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="lockstep")
    try:
        for job in jobs:
            job.start()
        active = list(jobs)
        while active:
            for job in active:  # one at a time, in order: each runs to its next model call
                job.go.set()
                yielded.wait()
                yielded.clear()
            active = [job for job in active if not job.finished]
            if not active:
                break
            try:
                requests = [job.request for job in active]
                out = predict_stream(predict, _chunks(requests, pool), batch_size)
                bounds = np.cumsum([0] + [len(job.request) for job in active])
                for job, lo, hi in zip(active, bounds[:-1], bounds[1:], strict=True):
                    job.reply = out[lo:hi]
            except BaseException as error:  # noqa: BLE001 - every waiting call gets it
                for job in active:
                    job.reply = error
    finally:
        pool.shutdown()
        np.random.set_state(caller_state)
    for job in jobs:
        job.join()
        if job.error is not None:
            raise job.error
    return [job.result for job in jobs]
