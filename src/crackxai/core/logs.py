"""stdlib logging for every stage and tool: one line per step, `[logger] message` on stdout.

Each library module logs through `logging.getLogger(__name__)`, stages and tools through
`crackxai.<name>` (core.entry.log). Nothing is configured at import: the entry-point wrapper
(core.entry) calls `setup()`. Under Hydra (the pipeline tool), Hydra configures the root logger
for each job (console + `<job>/pipeline.log`); `use_root_handlers()` then hands crackxai's lines to
it alone, so they reach the job's log file and are printed once.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "[%(name)s] %(message)s"
LOGGER = "crackxai"


class _StdoutHandler(logging.StreamHandler):
    """Writes to the current sys.stdout (pytest and Hydra swap it after start-up)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:  # noqa: ANN001
        pass


def setup(level: int = logging.INFO) -> None:
    """Log crackxai's messages to stdout once per process (idempotent)."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level)
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)


def use_root_handlers() -> None:
    """Drop crackxai's own stdout handler: its records propagate to the root logger's handlers
    only (Hydra's job logging), instead of being printed twice."""
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _StdoutHandler)]:
        logger.removeHandler(handler)
    logger.propagate = True
