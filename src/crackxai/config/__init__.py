"""The config layer: schema, value checks and loading (conf/ with Hydra, or params.yaml)."""

from crackxai.config.checks import check_methods, check_values, parse_blur_kernel
from crackxai.config.load import (
    compose,
    default_config,
    did_you_mean,
    explainer_settings,
    find_conf_dir,
    flatten,
    load_config,
    load_params,
    to_dict,
    validate,
)
from crackxai.config.schema import *  # noqa: F403 - the dataclasses and allowed values

__all__ = [  # noqa: F405 - plus the schema's names
    "check_methods", "check_values", "compose", "default_config", "did_you_mean",
    "explainer_settings", "find_conf_dir", "flatten", "load_config", "load_params", "parse_blur_kernel", "to_dict", "validate",
]
