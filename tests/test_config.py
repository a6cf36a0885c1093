"""Configuration: conf/ composes, params.yaml never drifts from it, bad values fail fast and clearly."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from crackxai.config import Config, compose, load_config, parse_blur_kernel, to_dict
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
    # every key in conf/ is known to the schema and vice versa
    assert set(to_dict(cfg)) == set(OmegaConf.to_container(compose([])))


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
    ],
)
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config([override])


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
