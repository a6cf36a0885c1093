"""The record of fault cases (for the README "Reliability" table, printed by
tests/fault_table.py), kept free of heavy imports so the fast property tests can count theirs.

One JSON line per case, appended to $CRACKXAI_FAULT_LOG when set, else to fault_cases.jsonl in
pytest's base temp folder (the path is printed at the end of the session). A line may stand for
several cases (`cases`, `survived_cases`): one per property test, counting hypothesis examples.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOG_ENV = "CRACKXAI_FAULT_LOG"

# (fault, test name) -> {"tried", "survived", "what"}: hypothesis examples run by `counted` tests,
# written to the record at the end of the session (tests/conftest.py).
EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {}


class FaultLog:
    """Appends one JSON line per fault case: what was done, whether the project survived it
    (the rerun gave the right answer / the error was clear), whether any data was lost."""

    def __init__(self, path: Path):
        self.path = path

    def record(self, fault: str, case: str, survived: bool, data_lost: bool = False,
               **detail: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = {"fault": fault, "case": case, "survived": bool(survived),
                "data_lost": bool(data_lost), **detail}
        with open(self.path, "a", encoding="utf-8") as handle:  # O_APPEND: one line per write
            handle.write(json.dumps(line, sort_keys=True, default=str) + "\n")


def fault_log_path(base_temp: Path) -> Path:
    return Path(os.environ[LOG_ENV]) if os.environ.get(LOG_ENV) else base_temp / "fault_cases.jsonl"


def counted(fault: str, what: str) -> Callable:
    """Decorator (under @given) counting each example a property test runs and each that passes
    its checks, as cases of `fault` in the record."""

    def wrap(test: Callable) -> Callable:
        @functools.wraps(test)
        def run(*args: Any, **kwargs: Any) -> None:
            tally = EXAMPLES.setdefault((fault, test.__name__),
                                        {"tried": 0, "survived": 0, "what": what})
            tally["tried"] += 1
            test(*args, **kwargs)
            tally["survived"] += 1

        return run

    return wrap


def record_examples(log: FaultLog) -> None:
    """One line per counted property test run in this session."""
    for (fault, case), tally in EXAMPLES.items():
        log.record(fault, case, tally["tried"] == tally["survived"], cases=tally["tried"],
                   survived_cases=tally["survived"], what=tally["what"])
    EXAMPLES.clear()
