"""The one entry-point wrapper of every stage and tool.

    run_command("compare", lambda: compare(...))  # a tool (or @command("compare") on its main)
    run_stage("train", train.main, argv)          # a stage (crackxai.config.entry: run_command
                                                  # around parsing its config and main(cfg))

It logs to stdout (core.logs), keeps TensorFlow's start-up notices off stderr (core.quiet_tf),
runs the command, and turns a CrackxaiError into `crackxai.<name>: error: <one paragraph>` on
stderr with exit code 2, and Ctrl-C into one line with exit code 130. Only this outermost layer
exits: code underneath (library code, a Hydra job) raises exceptions, so that Hydra's multirun
can log a failed job and go on with the next one.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from crackxai.core import quiet_tf
from crackxai.core.errors import CrackxaiError, disk_full, is_disk_full
from crackxai.core.logs import setup as setup_logging

T = TypeVar("T")

INTERRUPTED = "interrupted; outputs are written atomically, rerun to continue."
ERROR_EXIT = 2
INTERRUPT_EXIT = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def log(stage: str, message: str) -> None:
    """One progress line per step, on the stage's logger: what it does and where outputs go."""
    logging.getLogger(f"crackxai.{stage}").info(message)


def prepare() -> None:
    """What every command does first, before importing TensorFlow: logging and quiet TF."""
    setup_logging()
    quiet_tf.install()


def _exit(name: str, message: str, code: int) -> NoReturn:
    print(f"crackxai.{name}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def run_command(name: str, command: Callable[[], T], interrupted: str = INTERRUPTED) -> T:
    """Run `command()` as command `name`: a CrackxaiError becomes one paragraph on stderr and
    exit code 2, Ctrl-C the line `interrupted` and exit code 130. Returns what it returns."""
    prepare()
    try:
        return command()
    except CrackxaiError as exc:
        _exit(name, str(exc), ERROR_EXIT)
    except KeyboardInterrupt:
        _exit(name, interrupted, INTERRUPT_EXIT)
    except OSError as exc:  # a full disk outside the atomic writers (which name their output)
        if not is_disk_full(exc):
            raise
        _exit(name, str(disk_full(exc.filename or "an output")), ERROR_EXIT)


def command(name: str, interrupted: str = INTERRUPTED
            ) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator form of run_command for a tool's `main(argv)`."""

    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def wrapper(*args: object, **kwargs: object) -> T:
            return run_command(name, lambda: fn(*args, **kwargs), interrupted)

        return wrapper

    return wrap
