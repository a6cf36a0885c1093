"""Progress of long loops: a tqdm bar with an ETA on a terminal, log lines with an ETA otherwise.

    for item in progress(items, total=len(items), desc="decode+resize", unit="img"): ...

Under DVC (or any redirected output) a bar's carriage returns would fill the log with thousands
of partial lines, so there the loop logs one line every `every` seconds instead (and one at the
end), each with the count, the rate and the estimated time left.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
logger = logging.getLogger("crackxai.progress")
LOG_EVERY_S = 30.0


def clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class RateLogger:
    """Logs `desc: done/total unit (x%), rate, elapsed, ETA` at most every `every` seconds;
    `update(done)` after each step, `finish()` at the end (silent for a loop shorter than
    `every`)."""

    def __init__(self, total: int | None, desc: str, unit: str, every: float = LOG_EVERY_S):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.start = self.last = time.monotonic()
        self.done = 0

    def update(self, done: int, force: bool = False) -> None:
        self.done = done
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        head = f"{self.desc}: {done}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"
        if self.total:
            eta = clock((self.total - done) / rate) if rate else "?"
            logger.info(f"{head} ({done / self.total:.0%}), {rate:.1f} {self.unit}/s, "
                        f"elapsed {clock(elapsed)}, ETA {eta}")
        else:
            logger.info(f"{head}, {rate:.1f} {self.unit}/s, elapsed {clock(elapsed)}")

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def finish(self) -> None:
        elapsed = time.monotonic() - self.start
        if elapsed >= self.every:
            logger.info(f"{self.desc}: {self.done} {self.unit} done in {clock(elapsed)}")


def _logged(items: Iterable[T], total: int | None, desc: str, unit: str,
            every: float) -> Iterator[T]:
    rate = RateLogger(total, desc, unit, every)
    for done, item in enumerate(items, 1):
        yield item
        rate.update(done)
    rate.finish()


def progress(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
             every: float = LOG_EVERY_S, tty: bool | None = None) -> Iterator[T]:
    """`items`, reporting progress: tqdm when stderr is a terminal (`tty`, None = detect), else a
    log line every `every` seconds with an ETA."""
    if tty is None:
        tty = sys.stderr.isatty()
    if tty:
        return iter(tqdm(items, total=total, desc=desc, unit=unit))
    return _logged(items, total, desc, unit, every)
