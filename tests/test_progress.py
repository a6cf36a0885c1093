"""core.progress: a tqdm bar on a terminal, log lines with an ETA in logs (DVC, pipelines)."""

from __future__ import annotations

import logging
import re

import pytest

from crackxai.core.progress import RateLogger, progress


def test_without_a_terminal_it_logs_count_rate_and_eta(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="crackxai.progress")
    assert list(progress(range(5), total=5, desc="decode", unit="img", every=0, tty=False)) == \
        list(range(5))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 6  # one per step (every=0) and the closing line
    assert re.fullmatch(r"decode: 2/5 img \(40%\), [\d.]+ img/s, elapsed 00:00, ETA 00:00",
                        lines[1])
    assert lines[-1].startswith("decode: 5 img done in")


def test_a_short_loop_logs_nothing(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="crackxai.progress")
    assert list(progress(iter("abc"), desc="x", tty=False)) == ["a", "b", "c"]
    assert not caplog.records


def test_on_a_terminal_it_is_a_tqdm_bar_with_an_eta(capsys: pytest.CaptureFixture):
    assert list(progress(range(3), total=3, desc="bar", unit="img", tty=True)) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "bar: 100%" in err and "3/3" in err and "<00:00" in err  # tqdm's elapsed<remaining


def test_unknown_total_logs_without_eta(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="crackxai.progress")
    rate = RateLogger(None, "scan", "files", every=0)
    rate.update(7)
    assert re.fullmatch(r"scan: 7 files, [\d.]+ files/s, elapsed 00:00", caplog.records[0].getMessage())
