"""Fast checks of the fault handling the slow fault suite relies on, with real processes:
temporary folders of a SIGKILLed writer are removed by the next write, a live writer's are kept;
a disk-full error (real ENOSPC from /dev/full) becomes one paragraph naming the output."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from crackxai.core.errors import DiskFullError
from crackxai.core.io import atomic_dir, atomic_path, staged_outputs, temp_prefix

# Creates its temporary folder beside out/raw (as atomic_dir does), says so, then waits to be
# killed.
WRITER = """
import sys, tempfile, time
from crackxai.core.io import temp_prefix
print(tempfile.mkdtemp(dir=sys.argv[1], prefix=temp_prefix("raw")), flush=True)
time.sleep(600)
"""


def start_writer(folder: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_killed_writers_temporaries_removed_live_ones_kept(tmp_path: Path) -> None:
    dead, dead_tmp = start_writer(tmp_path)
    live, live_tmp = start_writer(tmp_path)
    try:
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        (dead_tmp / "half.png").write_bytes(b"\x89PNG")  # what a killed download leaves
        old = tmp_path / f".raw.old-{dead.pid}"  # killed between atomic_dir's two renames
        old.mkdir()
        with atomic_dir(tmp_path / "raw") as out:
            (out / "a.txt").write_text("new")
        assert not dead_tmp.exists() and not old.exists()
        assert live_tmp.is_dir()  # a live writer's folder is left alone
        assert (tmp_path / "raw" / "a.txt").read_text() == "new"
        with staged_outputs(tmp_path / "raw") as out:
            (out / "b.txt").write_text("more")
        assert live_tmp.is_dir() and (tmp_path / "raw" / "b.txt").is_file()
    finally:
        live.kill()
        live.wait()


def test_temp_prefix_holds_the_pid() -> None:
    import os

    assert temp_prefix("processed") == f".processed.tmp-{os.getpid()}-"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_enospc_becomes_one_paragraph(tmp_path: Path) -> None:
    """/dev/full fails every write with ENOSPC: the atomic writer names its output, keeps the
    previous file and removes its temporary file."""
    target = tmp_path / "metrics.json"
    target.write_text("previous\n")
    with pytest.raises(DiskFullError) as err, atomic_path(target) as tmp, \
            open("/dev/full", "w") as full:
        tmp.write_text("partial")
        full.write("x" * 65536)
        full.flush()
    message = str(err.value)
    assert f"No space left on device while writing '{target}'" in message
    assert "\n" not in message and "rerun" in message
    assert target.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
