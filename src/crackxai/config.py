"""Structured configuration: the schema every stage validates against, and how a stage gets it.

`conf/` (Hydra) is the single source of truth. DVC recomposes `params.yaml` from it on
`dvc exp run -S ...`; stages run by DVC read `params.yaml` (`--params params.yaml`), stages run by
hand compose `conf/` with Hydra overrides. Either way the result is validated here before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from crackxai.errors import ConfigError

DATA_SOURCES = ("synthetic", "kaggle", "local")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
EXPLAIN_METHODS = ("shap", "gradcam", "gradcam_pp", "scorecam", "faster_scorecam", "lime")
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


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(
            f"Invalid value for '{key}': {value!r}. Allowed: {allowed}. "
            f"Fix it in conf/ or params.yaml, or override it, e.g. `{key}=<value>`."
        )


def _check_values(cfg: Config) -> None:
    """Value checks that types alone cannot express; each names its key and what is allowed."""
    d, p, t, e = cfg.data, cfg.preprocess, cfg.train, cfg.explain
    _check(d.source in DATA_SOURCES, "data.source", d.source, " | ".join(DATA_SOURCES))
    _check(d.source != "local" or bool(d.path), "data.path", d.path,
           "a folder or .zip with one sub-folder per class (required with data=local)")
    _check(d.limit_per_class is None or d.limit_per_class > 0, "data.limit_per_class",
           d.limit_per_class, "null or a positive integer")
    _check(d.synthetic.n_per_class >= 2, "data.synthetic.n_per_class", d.synthetic.n_per_class,
           "an integer >= 2")
    _check(d.synthetic.image_size >= MIN_IMAGE_SIZE, "data.synthetic.image_size",
           d.synthetic.image_size, f"an integer >= {MIN_IMAGE_SIZE}")
    _check(0.0 <= d.synthetic.difficulty <= 1.0, "data.synthetic.difficulty",
           d.synthetic.difficulty, "a number in [0, 1]")
    _check(p.image_size >= MIN_IMAGE_SIZE, "preprocess.image_size", p.image_size,
           f"an integer >= {MIN_IMAGE_SIZE} (the smallest input ResNet50 accepts)")
    fractions = (p.split.train, p.split.val, p.split.test)
    _check(all(f >= 0 for f in fractions) and abs(sum(fractions) - 1.0) < 1e-6,
           "preprocess.split", dict(train=p.split.train, val=p.split.val, test=p.split.test),
           "non-negative fractions summing to 1")
    _check(p.split.train > 0 and p.split.val > 0 and p.split.test > 0, "preprocess.split",
           dict(train=p.split.train, val=p.split.val, test=p.split.test),
           "train, val and test each > 0 (training, early stopping and testing need all three)")
    _check(0.0 < p.min_good_fraction <= 1.0, "preprocess.min_good_fraction",
           p.min_good_fraction, "a number in (0, 1]")
    _check(p.min_source_size >= 1, "preprocess.min_source_size", p.min_source_size,
           "a positive integer")
    _check(p.workers >= 0, "preprocess.workers", p.workers,
           "an integer >= 0 (0 decodes in the main thread)")
    _check(cfg.model.name == "resnet50", "model.name", cfg.model.name, "resnet50")
    _check(0.0 <= cfg.model.dropout < 1.0, "model.dropout", cfg.model.dropout, "[0, 1)")
    _check(0.0 <= cfg.model.augment.translate < 1.0, "model.augment.translate",
           cfg.model.augment.translate, "[0, 1)")
    _check(t.lr > 0, "train.lr", t.lr, "a positive number, e.g. 1e-3")
    _check(t.batch_size > 0, "train.batch_size", t.batch_size, "a positive integer")
    _check(t.epochs > 0, "train.epochs", t.epochs, "a positive integer")
    _check(t.patience >= 0, "train.patience", t.patience, "an integer >= 0")
    _check(t.fine_tune.unfreeze >= 0, "train.fine_tune.unfreeze", t.fine_tune.unfreeze,
           "an integer >= 0 (number of ResNet50 stages to unfreeze; 0 = no fine-tuning)")
    _check(t.fine_tune.lr > 0, "train.fine_tune.lr", t.fine_tune.lr, "a positive number")
    _check(t.fine_tune.epochs >= 0, "train.fine_tune.epochs", t.fine_tune.epochs, "an integer >= 0")
    _check(t.precision in PRECISIONS, "train.precision", t.precision, " | ".join(PRECISIONS))
    _check(0.0 <= cfg.evaluate.threshold <= 1.0, "evaluate.threshold", cfg.evaluate.threshold,
           "a number in [0, 1]")
    _check(cfg.evaluate.gallery_size >= 0, "evaluate.gallery_size", cfg.evaluate.gallery_size,
           "an integer >= 0")
    unknown = [m for m in e.methods if m not in EXPLAIN_METHODS]
    _check(not unknown, "explain.methods", unknown, ", ".join(EXPLAIN_METHODS))
    _check(e.n_images > 0 or bool(e.images), "explain.n_images", e.n_images,
           "a positive integer (or a non-empty explain.images list)")
    _check(e.target is None or e.target >= 0, "explain.target", e.target,
           "null (the predicted class) or a class index >= 0")
    masker = e.shap.masker
    _check(masker in ("inpaint_telea", "inpaint_ns") or parse_blur_kernel(masker) is not None,
           "explain.shap.masker", masker, "inpaint_telea | inpaint_ns | blur(k,k), e.g. blur(15,15)")
    _check(e.cam_min_size >= 1, "explain.cam_min_size", e.cam_min_size, "an integer >= 1")
    _check(e.shap.max_evals > 1, "explain.shap.max_evals", e.shap.max_evals, "an integer > 1")
    _check(e.shap.batch_size > 0, "explain.shap.batch_size", e.shap.batch_size, "> 0")
    _check(e.lime.num_samples > 0, "explain.lime.num_samples", e.lime.num_samples, "> 0")
    _check(e.lime.num_features > 0, "explain.lime.num_features", e.lime.num_features, "> 0")
    _check(e.lime.segmentation.algo in ("quickshift", "slic", "felzenszwalb"),
           "explain.lime.segmentation.algo", e.lime.segmentation.algo,
           "quickshift | slic | felzenszwalb")
    _check(e.faster_scorecam.max_N > 0, "explain.faster_scorecam.max_N",
           e.faster_scorecam.max_N, "a positive integer (e.g. 10)")
    _check(e.metrics.baseline in BASELINES, "explain.metrics.baseline", e.metrics.baseline,
           " | ".join(BASELINES))
    _check(e.metrics.steps >= 2, "explain.metrics.steps", e.metrics.steps, "an integer >= 2")
    _check(0 < e.metrics.top_k_percent <= 100, "explain.metrics.top_k_percent",
           e.metrics.top_k_percent, "a number in (0, 100]")
    _check(e.metrics.randomize in RANDOMIZE, "explain.metrics.randomize", e.metrics.randomize,
           " | ".join(RANDOMIZE))


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


def validate(raw: DictConfig | dict, source: str = "configuration") -> Config:
    """Merge `raw` onto the schema: unknown keys, wrong types and impossible values fail here."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), raw)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        msg = str(exc).splitlines()[0]
        raise ConfigError(
            f"Invalid {source} at key '{key}': {msg}. Check the spelling and type against "
            f"conf/ (the schema is crackxai.config.Config)."
        ) from None
    _check_values(cfg)
    return cfg


def find_conf_dir() -> Path:
    """`conf/` of the project in the working directory, else the one beside the package source."""
    for candidate in (Path.cwd() / "conf", Path(__file__).resolve().parents[2] / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise ConfigError(
        "No Hydra configuration found: expected conf/config.yaml in the working directory. "
        "Run the command from the crackxai project root."
    )


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose `conf/` with Hydra overrides (the same grammar as `dvc exp run -S`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(find_conf_dir()), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(
            f"Invalid override(s) {list(overrides or [])}: {reason} "
            f"Groups and options live in {find_conf_dir()}; see README 'Configuration'."
        ) from None


def load_params(path: str | Path) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Parameter file '{path}' not found. Regenerate it with `make params`.")
    try:
        return OmegaConf.load(path)  # type: ignore[return-value]
    except Exception as exc:  # YAML errors come in several types
        raise ConfigError(f"Cannot parse '{path}': {str(exc).splitlines()[0]}") from None


def load_config(args: list[str]) -> Config:
    """A stage's configuration from its command line.

    `--params FILE [key=value ...]`: the DVC path (FILE is params.yaml), dotted overrides applied on top.
    `[key=value | group=option ...]`: compose conf/ with Hydra overrides.
    """
    if args and args[0] == "--params":
        if len(args) < 2:
            raise ConfigError("--params needs a file, e.g. `--params params.yaml`.")
        raw = load_params(args[1])
        if args[2:]:
            raw = OmegaConf.merge(raw, OmegaConf.from_dotlist(args[2:]))
        return validate(raw, source=f"parameter in {args[1]}")
    return validate(compose(args), source="configuration")


def to_dict(cfg: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1e-3}} -> {'train.lr': 1e-3} (MLflow params use dotted keys)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
