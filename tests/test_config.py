"""Configuration: conf/ composes, params.yaml never drifts from it, bad values fail fast and clearly."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from crackxai.config import (
    Config,
    compose,
    default_config,
    did_you_mean,
    load_config,
    parse_blur_kernel,
    to_dict,
)
from crackxai.config.params import write_params
from crackxai.core.errors import ConfigError

from .conftest import REPO


def test_committed_params_equal_the_default_composition(tmp_path):
    write_params(tmp_path / "params.yaml")  # DVC's own composer, as `dvc exp run` uses it
    composed = yaml.safe_load((tmp_path / "params.yaml").read_text())
    committed = yaml.safe_load((REPO / "params.yaml").read_text())
    assert committed == composed, "params.yaml drifted from conf/: run `make params`"


def test_defaults_validate_and_match_the_schema_defaults():
    cfg = load_config([])
    assert isinstance(cfg, Config)
    assert cfg.data.source == "synthetic"
    assert cfg.model.name == "resnet50"
    # every section in conf/ is known to the schema and vice versa (leaf by leaf:
    # test_config_schema.py)
    assert set(to_dict(cfg)) == set(OmegaConf.to_container(compose([])))


def test_default_config_is_conf_composed_with_no_overrides(project):
    cfg = default_config()
    assert isinstance(cfg, Config)
    assert cfg == load_config([]) == load_config(["--params", "params.yaml"])
    assert isinstance(cfg.explain.methods, list) and cfg.explain.faster_scorecam.max_N == 10
    changed = default_config({"train": {"lr": 0.5}, "tracking": {"experiment": "team"}})
    assert changed.train.lr == 0.5 and changed.tracking.experiment == "team"
    assert changed.train.epochs == cfg.train.epochs
    with pytest.raises(ConfigError, match=r"train\.lrr.*Did you mean `train\.lr`"):
        default_config({"train": {"lrr": 0.5}})
    with pytest.raises(ConfigError, match=r"train\.lr.*values given to default_config"):
        default_config({"train": {"lr": -1.0}})


def test_params_file_path_is_what_dvc_runs(project):
    cfg = load_config(["--params", "params.yaml", "train.lr=0.5"])
    assert cfg.train.lr == 0.5


def test_presets_compose():
    smoke = load_config(["experiment=smoke"])
    assert smoke.preprocess.image_size == 48 and smoke.train.epochs == 1
    kaggle = load_config(["experiment=kaggle"])
    assert kaggle.data.source == "kaggle" and kaggle.model.weights == "imagenet"
    assert kaggle.preprocess.image_size == 150


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lr=-1", "train.lr"),
        ("preprocess.image_size=16", "preprocess.image_size"),
        ("preprocess.split.train=0", "preprocess.split"),
        ("preprocess.split.test=0.5", "preprocess.split"),
        ("train.precision=float8", "train.precision"),
        ("explain.methods=[gradcam,magic]", "explain.methods"),
        ("explain.shap.masker=blur(0,3)", "explain.shap.masker"),
        ("train.epochs=abc", "train.epochs"),
        ("+train.lrr=1", "train.lrr"),
        # the checks that used to fail only later, in the stages (or with a traceback)
        ("evaluate.batch_size=0", "evaluate.batch_size"),
        ("explain.batch_size=0", "explain.batch_size"),
        ("explain.lime.batch_size=0", "explain.lime.batch_size"),
        ("explain.scorecam.max_N=0", "explain.scorecam.max_N"),
        ("explain.scorecam.max_N=-2", "explain.scorecam.max_N"),
        ("explain.faster_scorecam.max_N=-1", "explain.faster_scorecam.max_N"),
        ("explain.max_misclassified=-1", "explain.max_misclassified"),
        ("explain.images=[3,-1]", "explain.images"),
        ("explain.methods=[]", "explain.methods"),
        ("explain.methods=[gradcam,gradcam]", "explain.methods"),
        ("explain.n_images=0", "explain.n_images"),
        ("explain.target=-1", "explain.target"),
        ("explain.layer=''", "explain.layer"),
        ("explain.cam_min_size=0", "explain.cam_min_size"),
        ("explain.shap.max_evals=1", "explain.shap.max_evals"),
        ("explain.shap.batch_size=0", "explain.shap.batch_size"),
        ("explain.shap.masker=gaussian", "explain.shap.masker"),
        ("explain.lime.num_samples=0", "explain.lime.num_samples"),
        ("explain.lime.num_features=0", "explain.lime.num_features"),
        ("explain.lime.hide_color=256", "explain.lime.hide_color"),
        ("explain.lime.segmentation.algo=watershed", "explain.lime.segmentation.algo"),
        ("explain.lime.segmentation.kernel_size=0", "explain.lime.segmentation.kernel_size"),
        ("explain.lime.segmentation.max_dist=-1", "explain.lime.segmentation.max_dist"),
        ("explain.lime.segmentation.ratio=1.5", "explain.lime.segmentation.ratio"),
        ("explain.metrics.baseline=white", "explain.metrics.baseline"),
        ("explain.metrics.steps=1", "explain.metrics.steps"),
        ("explain.metrics.top_k_percent=0", "explain.metrics.top_k_percent"),
        ("explain.metrics.top_k_percent=nan", "explain.metrics.top_k_percent"),
        ("explain.metrics.randomize=all", "explain.metrics.randomize"),
        ("evaluate.threshold=1.5", "evaluate.threshold"),
        ("evaluate.gallery_size=-1", "evaluate.gallery_size"),
        ("evaluate.positive_class=''", "evaluate.positive_class"),
        ("data.source=s3", "data.source"),
        ("data.kaggle_dataset=no-owner", "data.kaggle_dataset"),
        ("data.limit_per_class=0", "data.limit_per_class"),
        ("data.synthetic.n_per_class=1", "data.synthetic.n_per_class"),
        ("data.synthetic.image_size=31", "data.synthetic.image_size"),
        ("data.synthetic.difficulty=1.5", "data.synthetic.difficulty"),
        ("preprocess.split.val=-0.1", "preprocess.split.val"),
        ("preprocess.split.group_by=photo", "preprocess.split.group_by"),
        ("preprocess.split.group_by=filename_regex preprocess.split.group_regex=''",
         "preprocess.split.group_regex"),
        ("preprocess.split.group_by=filename_regex preprocess.split.group_regex='(a'",
         "preprocess.split.group_regex"),
        ("preprocess.split.group_by=column preprocess.split.group_column=''",
         "preprocess.split.group_column"),
        ("preprocess.split.hash_distance=64", "preprocess.split.hash_distance"),
        ("preprocess.min_good_fraction=0", "preprocess.min_good_fraction"),
        ("preprocess.min_source_size=0", "preprocess.min_source_size"),
        ("preprocess.workers=-1", "preprocess.workers"),
        ("model.name=vgg16", "model.name"),
        ("model.weights=''", "model.weights"),
        ("model.dropout=1", "model.dropout"),
        ("model.augment.translate=-0.1", "model.augment.translate"),
        ("train.lr=inf", "train.lr"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.epochs=0", "train.epochs"),
        ("train.patience=-1", "train.patience"),
        ("train.fine_tune.unfreeze=-1", "train.fine_tune.unfreeze"),
        ("train.fine_tune.lr=0", "train.fine_tune.lr"),
        ("train.fine_tune.epochs=-1", "train.fine_tune.epochs"),
        ("train.ood_quantile=1", "train.ood_quantile"),
        ("train.ood_quantile=0", "train.ood_quantile"),
        ("seed=-1", "seed"),
        ("seed=4294967296", "seed"),
        ("tracking.experiment=''", "tracking.experiment"),
    ],
)
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        load_config(override.split(" "))
    assert "from the command line" in str(err.value)


@pytest.mark.parametrize("override", ["explain.scorecam.max_N=-1", "explain.scorecam.max_N=16",
                                      "explain.images=[0,5]", "explain.max_misclassified=0",
                                      "explain.lime.hide_color=0", "data.limit_per_class=null",
                                      "preprocess.split.hash_distance=0",
                                      "preprocess.split.group_by=near_duplicates",
                                      "preprocess.split.group_by=column "
                                      "preprocess.split.group_column=photo",
                                      r"preprocess.split.group_by=filename_regex "
                                      r"preprocess.split.group_regex='^(\w+)_'"])
def test_edge_values_that_are_allowed(override):
    load_config(override.split(" "))


def test_the_same_checks_run_on_params_file_overrides(project):
    with pytest.raises(ConfigError, match=r"explain\.batch_size.*from the command line"):
        load_config(["--params", "params.yaml", "explain.batch_size=0"])
    with pytest.raises(ConfigError, match=r"'train\.lr' \(from the command line\).*Float"):
        load_config(["--params", "params.yaml", "train.lr=abc"])


def test_a_bad_value_in_the_params_file_is_reported_as_coming_from_it(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["explain"]["scorecam"]["max_N"] = 0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(ConfigError, match=r"explain\.scorecam\.max_N.*from params\.yaml"):
        load_config(["--params", "params.yaml"])
    # fixed on the command line: then it is fine
    assert load_config(["--params", "params.yaml", "explain.scorecam.max_N=4"]).explain \
        .scorecam.max_N == 4


def test_a_key_missing_from_the_params_file_is_named(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    del params["train"]["lr"]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(ConfigError, match=r"No value for 'train\.lr' \(from params\.yaml"):
        load_config(["--params", "params.yaml"])


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["trian.lr=0.1"], "from the command line"),
        (["+trian.lr=0.1"], "from the command line"),
        (["--params", "params.yaml", "trian.lr=0.1"], "from the command line"),
    ],
)
def test_unknown_key_did_you_mean(project, args, where):
    with pytest.raises(ConfigError, match=r"Did you mean `train\.lr`\?") as err:
        load_config(args)
    assert "'trian.lr'" in str(err.value) and where in str(err.value)


def test_unknown_key_in_the_params_file_did_you_mean(project):
    text = (project / "params.yaml").read_text().replace("  batch_size: 32", "  bacth_size: 32")
    (project / "params.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"'train\.bacth_size' \(from params\.yaml\).*"
                                          r"Did you mean `train\.batch_size`\?"):
        load_config(["--params", "params.yaml"])


def test_did_you_mean_by_the_last_part_of_the_key():
    assert did_you_mean("trian.lr") == " Did you mean `train.lr`?"
    assert "`train.lr`" in did_you_mean("lr") and "`train.fine_tune.lr`" in did_you_mean("lr")
    assert did_you_mean("completely_unrelated_zzz") == ""


@pytest.mark.parametrize(("override", "dotted"), [("data=kaggle", "data.source=kaggle"),
                                                   ("experiment=smoke", "experiment.")])
def test_group_override_with_params_file_says_what_to_do(project, override, dotted):
    with pytest.raises(ConfigError) as err:
        load_config(["--params", "params.yaml", override])
    msg = str(err.value)
    assert f"`{override}` from the command line" in msg and "--params params.yaml" in msg
    assert dotted in msg and "drop `--params params.yaml`" in msg
    assert "Merge error" not in msg and "'?'" not in msg


def test_data_options_share_base_and_set_only_what_differs():
    conf = REPO / "conf" / "data"
    base = yaml.safe_load((conf / "base.yaml").read_text())
    for option in ("synthetic", "kaggle", "local"):
        own = yaml.safe_load((conf / f"{option}.yaml").read_text())
        assert own["defaults"] == ["base", "_self_"]
        assert set(own) - {"defaults"} <= {"source", "path"}
        composed = OmegaConf.to_container(compose([f"data={option}"]).data)
        assert list(composed) == list(base)  # same keys, same order (params.yaml unchanged)
        assert composed["source"] == option
    with pytest.raises(ConfigError, match=r"data\.source"):
        load_config(["data=base"])  # base names no source: not an option of its own


def test_unknown_group_option_lists_the_alternatives():
    with pytest.raises(ConfigError, match="synthetic"):
        load_config(["data=nonexistent"])


def test_local_needs_a_path():
    with pytest.raises(ConfigError, match="data.path"):
        load_config(["data=local"])


def test_blur_kernel_parsing():
    assert parse_blur_kernel("blur(15,15)") == (15, 15)
    assert parse_blur_kernel("blur( 3 , 5 )") == (3, 5)
    assert parse_blur_kernel("inpaint_telea") is None
    assert parse_blur_kernel("blur(a,b)") is None


def test_bad_override_exits_2_with_one_paragraph(project):
    # the real entry point: no traceback, the key named, exit code 2
    out = subprocess.run([sys.executable, "-m", "crackxai.train", "train.lr=-1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "train.lr" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
