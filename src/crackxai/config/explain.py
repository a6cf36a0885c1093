"""The explain settings as the xai layer takes them: quality and rerun settings, and how to build
a method on any model and seed. Shared by the explain stage and the scorecard tool, so both read
the config alike."""

from __future__ import annotations

from typing import Any

from crackxai.config.load import explainer_settings, to_dict
from crackxai.config.schema import Config
from crackxai.xai import registry
from crackxai.xai.assess import Make, Reruns
from crackxai.xai.scoring import Quality


def quality_settings(cfg: Config) -> Quality:
    """explain.metrics without its reruns and bootstrap blocks, plus the seed."""
    settings = {k: v for k, v in to_dict(cfg)["explain"]["metrics"].items()
                if k not in ("reruns", "bootstrap")}
    return Quality(**settings, seed=cfg.seed)


def rerun_settings(cfg: Config) -> Reruns:
    """explain.metrics.reruns, plus the seed."""
    return Reruns(**to_dict(cfg)["explain"]["metrics"]["reruns"], seed=cfg.seed)


def explainer_factory(cfg: Config, method: str, layer: str | None) -> Make:
    """`make(model, predictor, seed)`: `method` built from its explain.<method> section on any
    model (the trained one, a randomised copy) with any seed."""
    settings = explainer_settings(cfg, method)

    def make(model: Any, predictor: Any, seed: int) -> Any:
        return registry.create(method, model=model, predictor=predictor, layer=layer,
                               **{**settings, "seed": seed})
    return make
