"""conf/ and the schema describe the same configuration, leaf by leaf: every leaf in conf/ (in every
group option and preset) is a schema leaf of the same type, and every schema leaf has its value in
conf/ (the schema holds types only, so a leaf missing from conf/ would have no default at all)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import pytest
from omegaconf import MISSING, OmegaConf

from crackxai.config import compose
from crackxai.config.schema import Config, leaf_types, section_keys

from .conftest import REPO

CONF = REPO / "conf"
# every option of every group (each composed on top of the defaults), data=base excepted
OPTIONS = [[]] + [[f"{group.name}={option.stem}"]
                  for group in sorted(p for p in CONF.iterdir() if p.is_dir())
                  for option in sorted(group.glob("*.yaml"))
                  if (group.name, option.stem) != ("data", "base")]


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """{'train.lr': 0.001, ...}: dicts are descended into, lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def matches(value: Any, annotation: Any) -> bool:
    """Whether a YAML value has the annotated type (an int is a float; `???` is any type)."""
    if value == MISSING:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(matches(v, item) for v in value)
    if isinstance(value, bool):
        return annotation is bool
    if annotation is float:
        return isinstance(value, int | float)
    return isinstance(value, annotation)


def test_every_schema_leaf_is_typed_only():
    """No default value written by hand in the schema: every leaf is MISSING."""
    def walk(cls: type, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = (f.default_factory() if f.default_factory is not dataclasses.MISSING
                     else f.default)
            if dataclasses.is_dataclass(value):
                out.update(walk(type(value), f"{prefix}{f.name}."))
            else:
                out[f"{prefix}{f.name}"] = value
        return out

    defaults = walk(Config)
    assert set(defaults) == set(leaf_types())
    written = {k: v for k, v in defaults.items() if v != MISSING}
    assert not written, f"defaults belong in conf/, not in the schema: {written}"


@pytest.mark.parametrize("overrides", OPTIONS, ids=lambda o: " ".join(o) or "defaults")
def test_conf_and_schema_have_the_same_leaves_with_the_same_types(overrides):
    composed = leaves(OmegaConf.to_container(compose(overrides), resolve=False))
    schema = leaf_types()
    assert sorted(set(composed) - set(schema)) == [], "keys in conf/ the schema does not know"
    assert sorted(set(schema) - set(composed)) == [], "schema keys with no value in conf/"
    wrong = {k: (v, schema[k]) for k, v in composed.items() if not matches(v, schema[k])}
    assert not wrong, f"values whose type differs from the schema: {wrong}"
    assert not set(composed) & section_keys()  # a section is never a leaf


def test_every_option_of_every_group_is_covered():
    assert len(OPTIONS) == 1 + sum(1 for p in CONF.glob("*/*.yaml")) - 1  # all but data/base
    assert ["experiment=smoke"] in OPTIONS and ["data=local"] in OPTIONS
