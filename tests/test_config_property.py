"""Property: any value of any type in any config leaf gives either a valid Config or a ConfigError
naming that leaf's key, never another exception (no traceback, whatever the user types)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from crackxai.config import Config, compose, validate
from crackxai.config.schema import leaf_types
from crackxai.core.errors import ConfigError
from tests.fault_record import counted

KEYS = sorted(leaf_types())

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-3, max_value=300),  # near the boundaries of the checks
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1.5, max_value=1.5),
    st.text(max_size=20),
    st.sampled_from(["???", "${nope}", "${seed}", "blur(3,3)", "blur(0,1)", "local", "kaggle",
                     "slic", "mean", "top_block", "mixed_float16", "imagenet", "a/b", "", " "]),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=4),
    st.lists(st.sampled_from(["gradcam", "lime", "shap", "magic"]), max_size=4),
    st.dictionaries(st.sampled_from(["a", "lr", "source"]), SCALARS, max_size=2),
)


@pytest.fixture(scope="module")
def defaults() -> dict[str, Any]:
    return OmegaConf.to_container(compose([]), resolve=False)  # type: ignore[return-value]


def set_leaf(tree: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    tree = copy.deepcopy(tree)
    *path, last = key.split(".")
    node = tree
    for part in path:
        node = node[part]
    node[last] = value
    return tree


CONFIG = counted("hypothesis: any value in any config leaf or section",
                 "a valid Config or one ConfigError naming the key, never another exception")
FAST = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]  # the fixture is read-only


@settings(max_examples=400, deadline=None, suppress_health_check=FAST)
@given(key=st.sampled_from(KEYS), value=VALUES)
@CONFIG
def test_any_value_in_any_leaf_is_valid_or_a_config_error_naming_it(defaults, key, value):
    try:
        cfg = validate(set_leaf(defaults, key, value), source="params.yaml")
    except ConfigError as err:
        assert key in str(err), f"{key}={value!r}: the error does not name the key: {err}"
        return
    assert isinstance(cfg, Config)


@settings(max_examples=100, deadline=None, suppress_health_check=FAST)
@given(section=st.sampled_from(["data", "train", "explain.lime", "explain.scorecam", "model"]),
       value=SCALARS)
@CONFIG
def test_a_section_replaced_by_a_scalar_is_a_config_error_naming_it(defaults, section, value):
    with pytest.raises(ConfigError, match=section.replace(".", r"\.")):
        validate(set_leaf(defaults, section, value), source="params.yaml")
