"""The configuration schema: one dataclass per section of conf/, with the types and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from crackxai.data.sources import SOURCES as DATA_SOURCES  # noqa: F401 - for the checks
from crackxai.xai.registry import NAMES as EXPLAIN_METHODS

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
SHAP_MASKERS = ("inpaint_telea", "inpaint_ns", "blur(k,k)")
BASELINES = ("blur", "mean", "black")
RANDOMIZE = ("head", "top_block", "top_2_blocks")
MIN_IMAGE_SIZE = 32  # keras.applications.ResNet50(include_top=False) refuses smaller inputs


@dataclass
class SyntheticConfig:
    n_per_class: int = 1000
    image_size: int = 227
    difficulty: float = 0.5


@dataclass
class DataConfig:
    source: str = "synthetic"
    path: str | None = None
    kaggle_dataset: str = "arunrk7/surface-crack-detection"
    limit_per_class: int | None = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class SplitConfig:
    train: float = 0.7
    val: float = 0.15
    test: float = 0.15


@dataclass
class PreprocessConfig:
    image_size: int = 64
    split: SplitConfig = field(default_factory=SplitConfig)
    min_good_fraction: float = 0.9
    min_source_size: int = 32
    workers: int = 2  # threads for decode+resize+hash; 0 = in the main thread


@dataclass
class AugmentConfig:
    flip: bool = True
    translate: float = 0.1


@dataclass
class ModelConfig:
    name: str = "resnet50"
    weights: str | None = None
    dropout: float = 0.2
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class FineTuneConfig:
    unfreeze: int = 0
    lr: float = 1e-5
    epochs: int = 0


@dataclass
class TrainConfig:
    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 5
    patience: int = 2
    fine_tune: FineTuneConfig = field(default_factory=FineTuneConfig)
    precision: str = "float32"
    deterministic: bool = True


@dataclass
class EvaluateConfig:
    threshold: float = 0.5
    gallery_size: int = 8
    batch_size: int = 64
    positive_class: str | None = None  # null: "Positive" if a class has that name, else the 2nd


@dataclass
class ShapConfig:
    masker: str = "inpaint_telea"
    max_evals: int = 500
    batch_size: int = 50


@dataclass
class ScorecamConfig:
    max_N: int = -1  # noqa: N815 - tf-keras-vis's own argument name


@dataclass
class SegmentationConfig:
    algo: str = "quickshift"
    kernel_size: float = 4
    max_dist: float = 200
    ratio: float = 0.2


@dataclass
class LimeConfig:
    num_samples: int = 1000
    num_features: int = 5
    positive_only: bool = True
    hide_rest: bool = False
    hide_color: int | None = None  # None: each superpixel's mean colour (see conf/explain)
    batch_size: int = 50
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)


@dataclass
class ExplainMetricsConfig:
    faithfulness: bool = True
    baseline: str = "blur"
    steps: int = 20
    localisation: bool = True
    top_k_percent: float = 5.0
    sanity: bool = True
    randomize: str = "head"


@dataclass
class ExplainConfig:
    n_images: int = 8
    images: list[int] = field(default_factory=list)
    max_misclassified: int = 3
    target: int | None = None
    layer: str | None = None
    cam_min_size: int = 7  # layer=null: last feature map at least this many pixels a side
    methods: list[str] = field(default_factory=lambda: list(EXPLAIN_METHODS))
    batch_size: int = 64
    shap: ShapConfig = field(default_factory=ShapConfig)
    scorecam: ScorecamConfig = field(default_factory=ScorecamConfig)
    faster_scorecam: ScorecamConfig = field(default_factory=lambda: ScorecamConfig(max_N=10))
    lime: LimeConfig = field(default_factory=LimeConfig)
    metrics: ExplainMetricsConfig = field(default_factory=ExplainMetricsConfig)


@dataclass
class TrackingConfig:
    uri: str | None = None
    experiment: str = "crackxai"


@dataclass
class Config:
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    optimized_metric: str | None = None  # what a pipeline job returns to Hydra's sweeper
