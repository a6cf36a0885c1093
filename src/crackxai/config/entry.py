"""A stage's command line: its configuration from Hydra overrides or --params, then `main(cfg)`,
inside the one entry-point wrapper (crackxai.core.entry.run_command).

It lives in the config layer because it parses configuration (core sits below config).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from crackxai.config.load import load_config
from crackxai.config.schema import Config
from crackxai.core.entry import run_command

T = TypeVar("T")

USAGE = """usage: python -m crackxai.{stage} [key=value | group=option ...]
       python -m crackxai.{stage} --params params.yaml [key=value ...]

Without --params, conf/ is composed with Hydra overrides (e.g. data=local data.path=/imgs
train.lr=1e-4 experiment=smoke). With --params (how dvc.yaml runs it) the given parameter file
is read as it is. Either way the result is validated before any work starts."""


def run_stage(stage: str, main: Callable[[Config], T], argv: list[str] | None = None) -> T | None:
    """Parse the stage's command line (default: the process's), validate, run `main`; a
    CrackxaiError exits 2 with one paragraph, Ctrl-C 130. Returns `main`'s result (its metrics),
    None for --help."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE.format(stage=stage))
        return None
    return run_command(stage, lambda: main(load_config(args)))
