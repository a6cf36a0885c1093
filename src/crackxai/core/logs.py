"""stdlib logging for every stage and tool: one line per step, `[logger] message` on stdout.

Each module logs through `logging.getLogger(__name__)` (stages use `crackxai.<stage>`). Under
Hydra (the pipeline tool) Hydra's own job logging applies as well, so its per-job log files fill.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "[%(name)s] %(message)s"


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
    root = logging.getLogger("crackxai")
    root.setLevel(level)
    if not any(isinstance(h, _StdoutHandler) for h in root.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
