"""The Explainer: one uniform call, `explain(images, targets)`, for every attribution method.

An Explainer is built from plain arguments: the model, a predictor (any callable (N, H, W, 3)
0-255 RGB -> (N, C) probabilities; crackxai.models.predictor.Predictor batches and counts its
calls) and the method's own settings as keyword arguments. It returns one float32 (H, W) map per
image at input resolution, where larger means more evidence FOR the target class.

Class attributes say what kind of method it is: `is_cam` (reads a convolutional feature map, so
it needs a layer), `uses_gradients` (a forward+backward pass through the model itself, not the
predictor), `stochastic` (the map depends on the seed: SHAP's tie-breaks, LIME's samples). `explain_with_cost` also gives the wall seconds and model evaluations it took.

Subclasses implement `_explain` only; `explain` checks the inputs and cleans the output. The
method names live in crackxai.xai.registry, which sets `name` on the instances it creates.

Speed: a method gets all the images to explain in one `explain` call and should keep the model
busy with full batches across them (crackxai.xai.batching); an image's map must not depend on
the other images in the call.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from crackxai.core.errors import CrackxaiError

if TYPE_CHECKING:  # keras is imported only by the methods that run a model
    import keras

Predict = Callable[[np.ndarray], np.ndarray]


class Explainer(abc.ABC):
    """Attribution maps for images (N, H, W, 3) and one target class per image."""

    is_cam: ClassVar[bool] = False
    uses_gradients: ClassVar[bool] = False
    stochastic: ClassVar[bool] = False

    def __init__(self, model: keras.Model, predictor: Predict, *, seed: int = 0):
        self.model = model
        self.predictor = predictor
        self.seed = int(seed)
        self.name = type(self).__name__  # the registry sets the method's registered name

    @classmethod
    def create(cls, model: keras.Model, predictor: Predict, *, seed: int = 0,
               layer: str | None = None, cam_min_size: int = 1, **settings: Any) -> Explainer:
        """Build from the settings every method is offered (the seed, the CAM layer and its
        minimum size) plus the method's own; a method takes only the shared ones it uses."""
        del layer, cam_min_size  # only CAMs read a feature map
        return cls(model, predictor, seed=seed, **settings)

    @property
    def num_classes(self) -> int:
        n = getattr(self.predictor, "num_classes", None)
        return int(n if n is not None else self.model.output_shape[-1])

    @property
    def n_evals(self) -> int:
        """Images through the predictor so far (0 for a plain function, which does not count)."""
        return int(getattr(self.predictor, "n_evals", 0))

    def explain(self, images: np.ndarray, targets: Sequence[int] | np.ndarray) -> np.ndarray:
        """(N, H, W) float32 maps for images (N, H, W, 3) uint8 RGB; larger = more evidence FOR
        `targets[i]`. Deterministic for the explainer's seed."""
        images = np.asarray(images)
        targets = np.asarray(targets).astype(int).reshape(-1)
        if images.ndim != 4 or images.shape[-1] != 3 or len(targets) != len(images):
            raise CrackxaiError(f"explain() needs images (N, H, W, 3) and N targets; got images "
                                f"{images.shape} and {len(targets)} targets.")
        n = self.num_classes
        bad = [int(t) for t in targets if not 0 <= t < n]
        if bad:
            raise CrackxaiError(f"Target class {bad[0]} does not exist: the model has {n} classes "
                                f"(0..{n - 1}). Fix explain.target / --target.")
        maps = self._explain(images, targets)
        return np.nan_to_num(np.asarray(maps, np.float32)).reshape(images.shape[:3])

    def explain_with_cost(self, images: np.ndarray, targets: Sequence[int] | np.ndarray
                          ) -> tuple[np.ndarray, float, int]:
        """(maps, wall seconds, model evaluations) of one `explain` call. A gradient method's
        forward+backward pass through the model itself counts as 1 evaluation per image."""
        before, start = self.n_evals, time.perf_counter()
        maps = self.explain(images, targets)
        seconds = time.perf_counter() - start
        evals = self.n_evals - before
        if self.uses_gradients and evals == 0:
            evals = len(maps)
        return maps, seconds, evals

    @abc.abstractmethod
    def _explain(self, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Maps for checked inputs: images (N, H, W, 3), targets (N,) int in range."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}' seed={self.seed}>"
