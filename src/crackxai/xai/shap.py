"""SHAP: the Partition explainer over pixels, the images side by side.

The masker is shap.maskers.Image (`inpaint_telea`, `inpaint_ns` or `blur(k,k)`); the map is the
SHAP value for the target class summed over the 3 channels (signed: > 0 raises the class score).
Reproducible: Partition breaks ties with NumPy's global RNG, so it is seeded before each image
(and restored after). Every image uses the same seed, so an image's map does not depend on the
other images in the call. The images' explanations run in lockstep (crackxai.xai.batching), so the
model gets the masked images of all of them at once, each image with its own RNG state: the maps
are those of one call per image.

shap is imported on use (the module stays import-light).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from crackxai.xai.base import Explainer, Predict
from crackxai.xai.batching import LazyImages, lockstep
from crackxai.xai.options import parse_blur_kernel

if TYPE_CHECKING:
    import keras

_PARTITION_TREES: dict[tuple[int, ...], np.ndarray] = {}


@functools.cache
def _masker_class() -> type:
    """shap.maskers.Image, its fixed pixel partition tree built by the plain-Python form of shap's
    own numba kernel (the same tree) and kept per image shape: compiling that kernel costs 15-45 s
    in every new process, for a tree that takes 0.2 s to build."""
    import shap
    from shap.maskers import _image

    kernel = getattr(getattr(_image, "_jit_build_partition_tree", None), "py_func", None)

    class ImageMasker(shap.maskers.Image):
        deferred = False  # True: hand the mask on (as the "masked image"); MaskedImages masks

        def __call__(self, mask: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, ...]:
            if self.deferred:
                return (np.asarray(mask, bool).reshape(1, -1),)
            return super().__call__(mask, x)

        def masked(self, mask: np.ndarray, x: np.ndarray) -> np.ndarray:
            """shap's own masking of x (H, W, 3): the image SHAP would send the model."""
            return super().__call__(mask, x)[0][0]

        def build_partition_tree(self) -> None:
            key = tuple(int(v) for v in self.input_shape)
            if kernel is None or len(key) != 3:  # another shap version: its own way
                return super().build_partition_tree()
            if key not in _PARTITION_TREES:
                h, w, c = key
                tree = np.zeros((h * w * c - 1, 4))
                kernel(0, h, 0, w, 0, c, w, c, h * w * c, tree, [(0, 0, h, 0, w, 0, c, -1, False)])
                _PARTITION_TREES[key] = tree
            self.clustering = _PARTITION_TREES[key].copy()

    return ImageMasker


class _MaskedImages(LazyImages):
    """The images shap's masker makes of `x` for each of `masks` (n, H*W*3), made on demand by the
    lockstep's threads while the model evaluates the ones before (inpainting is most of SHAP's
    cost besides the model, and OpenCV releases the GIL)."""

    def __init__(self, masker: Any, x: np.ndarray, masks: np.ndarray):
        self.masker, self.x, self.masks = masker, x, masks

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.masker.masked(self.masks[i], self.x)


class ShapExplainer(Explainer):
    """SHAP Partition explainer (shap.maskers.Image), `max_evals` model evaluations per image in
    batches of `batch_size`."""

    stochastic = True

    def __init__(self, model: keras.Model | None, predictor: Predict, *, seed: int = 0,
                 masker: str = "inpaint_telea", max_evals: int = 500, batch_size: int = 50):
        super().__init__(model, predictor, seed=seed)
        self.masker, self.max_evals, self.batch_size = masker, int(max_evals), int(batch_size)

    def explanation(self, image: np.ndarray, target: int,
                    class_names: Sequence[str] | None = None,
                    lockstep_model: Predict | None = None) -> Any:  # shap.Explanation
        """SHAP Partition explanation of one image (H, W, 3) for one class: values
        (1, H, W, 3, 1). SHAP calls the predictor, or with `lockstep_model` (a lockstep's model
        function) that function with the masked images as _MaskedImages, made on its side."""
        import shap

        blur = parse_blur_kernel(self.masker)
        masker = _masker_class()(f"blur({blur[0]},{blur[1]})" if blur else self.masker,
                                 image.shape)
        x = image.astype(np.float32)
        model = self.predictor
        if lockstep_model is not None:
            masker.deferred = True
            model = lambda masks: lockstep_model(_MaskedImages(masker, x, masks))  # noqa: E731
        names = list(class_names) if class_names is not None else None
        explainer = shap.Explainer(model, masker, output_names=names, algorithm="partition")
        state = np.random.get_state()
        np.random.seed(self.seed)  # Partition breaks ties with np.random.randn()
        try:
            return explainer(x[None], max_evals=self.max_evals,
                             batch_size=self.batch_size, outputs=[int(target)], silent=True)
        finally:
            np.random.set_state(state)

    @staticmethod
    def map_of(explanation: Any) -> np.ndarray:
        """The (H, W) map of an explanation: SHAP values summed over the channels."""
        return np.asarray(explanation.values[0, ..., 0], np.float32).sum(axis=-1)

    def _explain(self, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        works = [functools.partial(self._map, image, int(target))
                 for image, target in zip(images, targets, strict=True)]
        return np.stack(lockstep(works, self.predictor,
                                 int(getattr(self.predictor, "batch_size", self.batch_size))))

    def _map(self, image: np.ndarray, target: int, model: Predict) -> np.ndarray:
        return self.map_of(self.explanation(image, target, lockstep_model=model))
