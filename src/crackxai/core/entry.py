"""Shared entry-point plumbing: config from the command line, short errors instead of tracebacks."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from crackxai.config import Config, load_config
from crackxai.core.errors import CrackxaiError
from crackxai.core.logs import setup as setup_logging

USAGE = """usage: python -m crackxai.{stage} [key=value | group=option ...]
       python -m crackxai.{stage} --params params.yaml [key=value ...]

Without --params, conf/ is composed with Hydra overrides (e.g. data=local data.path=/imgs
train.lr=1e-4 experiment=smoke). With --params (how dvc.yaml runs it) the given parameter file
is read as it is. Either way the result is validated before any work starts."""


def log(stage: str, message: str) -> None:
    """One progress line per step, on the stage's logger: what it does and where outputs go."""
    logging.getLogger(f"crackxai.{stage}").info(message)


def fail(stage: str, message: str, code: int = 2) -> None:
    print(f"crackxai.{stage}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def run_stage(stage: str, main: Callable[[Config], object], argv: list[str] | None = None) -> None:
    """Parse the stage's command line, run it, and turn CrackxaiError into a one-paragraph error."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE.format(stage=stage))
        return
    setup_logging()
    try:
        main(load_config(args))
    except CrackxaiError as exc:
        fail(stage, str(exc))
    except KeyboardInterrupt:
        fail(stage, "interrupted; outputs are written atomically, rerun to continue.", code=130)
