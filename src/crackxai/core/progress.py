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


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _logged(items: Iterable[T], total: int | None, desc: str, unit: str,
            every: float) -> Iterator[T]:
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every:
            last = now
            rate = done / (now - start)
            if total:
                eta = (total - done) / rate if rate else float("inf")
                logger.info(f"{desc}: {done}/{total} {unit} ({done / total:.0%}), "
                            f"{rate:.1f} {unit}/s, elapsed {_clock(now - start)}, "
                            f"ETA {_clock(eta)}")
            else:
                logger.info(f"{desc}: {done} {unit}, {rate:.1f} {unit}/s, "
                            f"elapsed {_clock(now - start)}")
    elapsed = time.monotonic() - start
    if elapsed >= every:  # a short loop stays silent
        logger.info(f"{desc}: {done} {unit} done in {_clock(elapsed)}")


def progress(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
             every: float = LOG_EVERY_S, tty: bool | None = None) -> Iterator[T]:
    """`items`, reporting progress: tqdm when stderr is a terminal (`tty`, None = detect), else a
    log line every `every` seconds with an ETA."""
    if tty is None:
        tty = sys.stderr.isatty()
    if tty:
        return iter(tqdm(items, total=total, desc=desc, unit=unit))
    return _logged(items, total, desc, unit, every)
