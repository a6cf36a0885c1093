"""TensorFlow's start-up notices stay off stderr; everything else written there still shows."""

from __future__ import annotations

import os
import subprocess
import sys

from crackxai.core.quiet_tf import filtered_stderr


def test_tensorflow_imported_inside_a_command_prints_nothing() -> None:
    """The entry-point wrapper (every stage and tool) installs the filter before the command
    runs; importing crackxai alone installs nothing (tests/test_entry.py)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = ("from crackxai.core.entry import run_command\n"
            "run_command('demo', lambda: __import__('keras') and __import__('tensorflow'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""


def test_filter_keeps_real_messages(capfd) -> None:
    with filtered_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                    b"written to STDERR\n")
        os.write(2, b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on. ...\n")
        os.write(2, b"E0000 something real went wrong\n")
    assert capfd.readouterr().err == "E0000 something real went wrong\n"
