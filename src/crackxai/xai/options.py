"""Allowed values of the explanation methods' settings, import-light: the config layer validates
explain.* against them without importing shap, lime or TensorFlow."""

from __future__ import annotations

INPAINT_MASKERS = ("inpaint_telea", "inpaint_ns")


def parse_blur_kernel(masker: str) -> tuple[int, int] | None:
    """'blur(15,15)' -> (15, 15); anything else -> None."""
    s = masker.replace(" ", "")
    if not (s.startswith("blur(") and s.endswith(")")):
        return None
    try:
        kx, ky = (int(v) for v in s[5:-1].split(","))
    except ValueError:
        return None
    return (kx, ky) if kx > 0 and ky > 0 else None


SEGMENTATION_ALGOS = ("quickshift", "slic", "felzenszwalb")

# explain.metrics.baseline: what a "removed" pixel becomes (metrics.make_baseline)
BASELINES = ("blur", "mean", "black")
# explain.metrics.randomize -> the layer-name prefixes re-initialised besides the head (sanity check)
RANDOMIZE_STAGES = {"head": (), "top_block": ("conv5_",), "top_2_blocks": ("conv5_", "conv4_")}

# explain.runner: where the maps are computed (crackxai.xai.runners)
RUNNERS = ("local", "ray")
