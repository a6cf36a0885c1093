"""The configuration schema: one dataclass per section of conf/, with the types only.

The values live once, in conf/*.yaml (composed by Hydra, dumped to params.yaml by DVC); every leaf
here is `MISSING`, so a value missing from conf/ or params.yaml is an error naming its key instead
of a second, silently different default. `default_config()` (crackxai.config) gives the defaults.
Sections are `default_factory` so the schema knows every dotted key (for "did you mean ...?").
The allowed values of the string leaves are spelled here once, or imported from the domain module
that owns them (data.sources, xai.registry, xai.options), and used by the checks in checks.py.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from crackxai.data.groups import GROUP_BY, HASH_BITS  # noqa: F401 - for the checks
from crackxai.data.sources import SOURCES as DATA_SOURCES  # noqa: F401 - for the checks
from crackxai.models.options import DISTRIBUTIONS  # noqa: F401 - for the checks
from crackxai.xai.options import BASELINES, RANDOMIZE_STAGES, RUNNERS  # noqa: F401 - for the checks
from crackxai.xai.registry import NAMES as EXPLAIN_METHODS  # noqa: F401 - for the checks

__all__ = [  # what `from crackxai.config.schema import *` (crackxai.config) re-exports
    "BASELINES", "DATA_SOURCES", "DISTRIBUTIONS", "EXPLAIN_METHODS", "GROUP_BY", "HASH_BITS",
    "MAX_SEED", "MIN_IMAGE_SIZE", "MODEL_NAMES", "PRECISIONS", "RANDOMIZE", "RUNNERS",
    "AugmentConfig", "Config", "DataConfig", "EvaluateConfig",
    "ExplainConfig", "ExplainMetricsConfig", "FineTuneConfig", "LimeConfig", "ModelConfig",
    "PreprocessConfig", "RayConfig", "ScorecamConfig", "SegmentationConfig", "ShapConfig", "SplitConfig",
    "SyntheticConfig", "TrackingConfig", "TrainConfig", "leaf_types", "section_keys",
]

# keras.mixed_precision policies; float64 is for checking numerics (README "Scaling out"), not speed
PRECISIONS = ("float32", "float64", "mixed_bfloat16", "mixed_float16")
RANDOMIZE = tuple(RANDOMIZE_STAGES)
MODEL_NAMES = ("resnet50",)
MIN_IMAGE_SIZE = 32  # keras.applications.ResNet50(include_top=False) refuses smaller inputs
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit unsigned


@dataclass
class SyntheticConfig:
    n_per_class: int = MISSING
    image_size: int = MISSING
    difficulty: float = MISSING


@dataclass
class DataConfig:
    source: str = MISSING
    path: str | None = MISSING
    kaggle_dataset: str = MISSING
    limit_per_class: int | None = MISSING
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class SplitConfig:
    train: float = MISSING
    val: float = MISSING
    test: float = MISSING
    group_by: str = MISSING
    group_regex: str | None = MISSING
    group_column: str | None = MISSING
    hash_distance: int = MISSING


@dataclass
class PreprocessConfig:
    image_size: int = MISSING
    split: SplitConfig = field(default_factory=SplitConfig)
    min_good_fraction: float = MISSING
    min_source_size: int = MISSING
    workers: int = MISSING


@dataclass
class AugmentConfig:
    flip: bool = MISSING
    translate: float = MISSING


@dataclass
class ModelConfig:
    name: str = MISSING
    weights: str | None = MISSING
    dropout: float = MISSING
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class FineTuneConfig:
    unfreeze: int = MISSING
    lr: float = MISSING
    epochs: int = MISSING


@dataclass
class TrainConfig:
    lr: float = MISSING
    batch_size: int = MISSING
    epochs: int = MISSING
    patience: int = MISSING
    fine_tune: FineTuneConfig = field(default_factory=FineTuneConfig)
    precision: str = MISSING
    deterministic: bool = MISSING
    distribution: str = MISSING
    ood_quantile: float = MISSING


@dataclass
class EvaluateConfig:
    threshold: float = MISSING
    gallery_size: int = MISSING
    batch_size: int = MISSING
    positive_class: str | None = MISSING


@dataclass
class ShapConfig:
    masker: str = MISSING
    max_evals: int = MISSING
    batch_size: int = MISSING


@dataclass
class ScorecamConfig:
    max_N: int = MISSING  # noqa: N815 - tf-keras-vis's own argument name


@dataclass
class SegmentationConfig:
    algo: str = MISSING
    n_segments: int = MISSING
    compactness: float = MISSING
    sigma: float = MISSING
    kernel_size: float = MISSING
    max_dist: float = MISSING
    ratio: float = MISSING


@dataclass
class LimeConfig:
    num_samples: int = MISSING
    num_features: int = MISSING
    positive_only: bool = MISSING
    hide_rest: bool = MISSING
    hide_color: int | None = MISSING
    batch_size: int = MISSING
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)


@dataclass
class RerunsConfig:
    images: int = MISSING
    random_logit: bool = MISSING
    max_sensitivity_samples: int = MISSING
    max_sensitivity_radius: float = MISSING
    seeds: int = MISSING
    cascading: bool = MISSING


@dataclass
class BootstrapConfig:
    resamples: int = MISSING
    confidence: float = MISSING


@dataclass
class ExplainMetricsConfig:
    faithfulness: bool = MISSING
    baseline: str = MISSING
    steps: int = MISSING
    localisation: bool = MISSING
    top_k_percent: float = MISSING
    sanity: bool = MISSING
    randomize: str = MISSING
    reruns: RerunsConfig = field(default_factory=RerunsConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)


@dataclass
class RayConfig:
    address: str | None = MISSING
    num_actors: int = MISSING


@dataclass
class ExplainConfig:
    n_images: int = MISSING
    grid_images: int = MISSING
    images: list[int] = MISSING
    max_misclassified: int = MISSING
    target: int | None = MISSING
    layer: str | None = MISSING
    cam_min_size: int = MISSING
    methods: list[str] = MISSING
    batch_size: int = MISSING
    shap: ShapConfig = field(default_factory=ShapConfig)
    scorecam: ScorecamConfig = field(default_factory=ScorecamConfig)
    faster_scorecam: ScorecamConfig = field(default_factory=ScorecamConfig)
    lime: LimeConfig = field(default_factory=LimeConfig)
    metrics: ExplainMetricsConfig = field(default_factory=ExplainMetricsConfig)
    runner: str = MISSING
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class TrackingConfig:
    uri: str | None = MISSING
    experiment: str = MISSING
    registered_model: str | None = MISSING


@dataclass
class Config:
    seed: int = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    optimized_metric: str | None = MISSING  # what a pipeline job returns to Hydra's sweeper


# ---------------------------------------------------------------------------------------------
# The schema's keys (for "did you mean ...?" and the conf/-vs-schema test)
# ---------------------------------------------------------------------------------------------


@functools.cache
def leaf_types(cls: type = Config, prefix: str = "") -> dict[str, Any]:
    """Every leaf as a dotted key -> its annotated type, e.g. 'train.lr' -> float."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(leaf_types(hints[f.name], key + "."))
        else:
            out[key] = hints[f.name]
    return out


@functools.cache
def section_keys(cls: type = Config, prefix: str = "") -> frozenset[str]:
    """Every section (a node with keys below it) as a dotted key, e.g. 'train.fine_tune'."""
    out: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.add(f"{prefix}{f.name}")
            out |= section_keys(hints[f.name], f"{prefix}{f.name}.")
    return frozenset(out)
