"""LIME (lime_image), the images side by side: each pixel gets the signed weight of its superpixel.

Every superpixel is weighted (the reference notebooks' explain_instance); `num_features`,
`positive_only` and `hide_rest` only choose what LIME's own picture (`picture`, from
`get_image_and_mask`) shows. Reproducible: `LimeImageExplainer(random_state=seed)` samples and the
segmentation gets `random_seed=seed`; every image uses the same seed, so an image's map does not
depend on the other images in the call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from crackxai.xai.base import Explainer, Predict

if TYPE_CHECKING:
    import keras

SEGMENTATION = {"algo": "slic", "n_segments": 50, "compactness": 10.0, "sigma": 1.0}


def segmenter(settings: Mapping[str, Any], seed: int) -> Any:  # lime SegmentationAlgorithm
    """LIME's segmentation function for `settings` ({'algo': ..., the algorithm's parameters}).
    lime's wrapper passes each algorithm only the parameters skimage's function takes (SLIC:
    n_segments, compactness, sigma; quickshift: kernel_size, max_dist, ratio, random_seed), so
    one settings block can hold them all. SLIC asks for a superpixel COUNT, which suits any image
    size; quickshift's pixel-scale kernel makes 3-4 superpixels at 64 px, too few to point at a
    thin crack."""
    from lime.wrappers.scikit_image import SegmentationAlgorithm

    params = {k: v for k, v in settings.items() if k != "algo"}
    return SegmentationAlgorithm(settings["algo"], **params, random_seed=seed)


class LimeExplainer(Explainer):
    """LIME over superpixels: `num_samples` perturbed images in batches of `batch_size`; a hidden
    superpixel becomes `hide_color` (None: its own mean colour)."""

    stochastic = True

    def __init__(self, model: keras.Model | None, predictor: Predict, *, seed: int = 0,
                 num_samples: int = 1000, num_features: int = 5, positive_only: bool = True,
                 hide_rest: bool = False, hide_color: int | None = None, batch_size: int = 50,
                 segmentation: Mapping[str, Any] | None = None):
        super().__init__(model, predictor, seed=seed)
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        self.num_features, self.positive_only, self.hide_rest = (num_features, positive_only,
                                                                 hide_rest)
        self.hide_color = hide_color
        self.segmentation = {**SEGMENTATION, **(segmentation or {})}

    def explanation(self, image: np.ndarray, target: int,
                    classifier_fn: Predict | None = None) -> Any:  # lime ImageExplanation
        """LIME explanation of one image (H, W, 3) for one class; `classifier_fn` (default: the
        predictor) is the function LIME calls."""
        from lime import lime_image

        explainer = lime_image.LimeImageExplainer(random_state=self.seed)
        return explainer.explain_instance(
            np.asarray(image), classifier_fn or self.predictor, labels=(int(target),),
            top_labels=None, hide_color=self.hide_color, num_samples=self.num_samples,
            batch_size=self.batch_size, segmentation_fn=segmenter(self.segmentation, self.seed))

    @staticmethod
    def map_of(explanation: Any, target: int) -> np.ndarray:
        """The (H, W) map of an explanation: each pixel its superpixel's weight for `target`."""
        weights = np.zeros(int(explanation.segments.max()) + 1, np.float32)
        for segment, weight in explanation.local_exp[int(target)]:
            weights[segment] = weight
        return weights[explanation.segments]

    def picture(self, explanation: Any, target: int) -> np.ndarray:
        """LIME's own picture, uint8 RGB: `get_image_and_mask` (num_features, positive_only,
        hide_rest) with the superpixel boundaries marked."""
        from skimage.segmentation import mark_boundaries

        shown, mask = explanation.get_image_and_mask(target, positive_only=self.positive_only,
                                                     num_features=self.num_features,
                                                     hide_rest=self.hide_rest)
        picture = mark_boundaries(np.asarray(shown, np.float64) / 255.0, mask)
        return np.clip(np.round(picture * 255.0), 0, 255).astype(np.uint8)

    def _explain(self, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        # One image after the other: LIME already calls the model with full batches of
        # `batch_size`, and running the images in lockstep (crackxai.xai.batching) measured
        # slower here (0.7-0.8x on 2 shared cores), so it is not used.
        return np.stack([self.map_of(self.explanation(im, t), t)
                         for im, t in zip(images, targets, strict=True)])
