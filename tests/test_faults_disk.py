"""Issue #13 item 5: the disk fills up while a stage writes its outputs.

A small tmpfs is mounted where the outputs go (data/ of a real DVC project, holding the previous
outputs and a few KB to spare), and the stage command is run as dvc.yaml runs it. (Under
`dvc repro` DVC first deletes a stage's previous outputs, keeping them in its cache; running the
command directly checks our own promise: the previous outputs stay intact.) Expected: exit code 2
and one paragraph naming the output and the fix, no traceback, every previous file unchanged, no
temporary files left; with room made (the tmpfs remounted larger) the same command succeeds and
writes what it wrote before. Skipped with the reason when tmpfs cannot be mounted (not root, no
CAP_SYS_ADMIN).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults_support import tiny_project, tree_md5s
from tests.test_workflow import need_stages, sh

SPARE_KB = 48  # free space left on the tmpfs: less than each new output needs


def du_kb(path: Path) -> int:
    return sum(-(-p.stat().st_size // 4096) * 4 for p in path.rglob("*") if p.is_file())


def mount(where: Path, size_kb: int, remount: bool = False) -> subprocess.CompletedProcess:
    opts = f"size={size_kb}k" + (",remount" if remount else "")
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                          capture_output=True, text=True)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator:
    """A function that mounts a tmpfs of a given size at a folder, keeping its contents; every
    mount is undone at the end. Skips when mounting is not permitted."""
    mounted: list[Path] = []

    def mount_over(folder: Path, size_kb: int) -> Path:
        keep = tmp_path / f"keep-{folder.name}"
        shutil.copytree(folder, keep, symlinks=True)
        result = mount(folder, size_kb)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs at {folder} ({result.stderr.strip()}): the "
                        "disk-full tests need root or CAP_SYS_ADMIN")
        mounted.append(folder)
        shutil.copytree(keep, folder, symlinks=True, dirs_exist_ok=True)
        return folder

    yield mount_over
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def stage_cmd(stage: str) -> list[str]:
    return [sys.executable, "-m", f"crackxai.{stage}", "--params", "params.yaml"]


def temporaries(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob(".*") if p.name != ".gitignore"]


@pytest.mark.slow
def test_disk_full_keeps_previous_outputs(tmp_path: Path, small_tmpfs, fault_log) -> None:
    need_stages()
    proj = tiny_project(tmp_path / "proj")
    sh("dvc", "repro", "preprocess", cwd=proj, timeout=900)
    data = proj / "data"
    before = tree_md5s(data)
    size_kb = du_kb(data) + SPARE_KB
    small_tmpfs(data, size_kb)
    assert tree_md5s(data) == before
    failures = []
    for stage, output in (("download", "data/raw"), ("preprocess", "data/processed")):
        full = sh(*stage_cmd(stage), cwd=proj, check=False, timeout=900)
        errors = [line for line in full.stderr.splitlines()  # (tqdm's bars go to stderr too)
                  if line.startswith(f"crackxai.{stage}: error:")]
        err = errors[-1] if errors else full.stderr[-2000:]
        clear = (full.returncode == 2 and len(errors) == 1
                 and full.stderr.rstrip().endswith(err)
                 and err.startswith(f"crackxai.{stage}: error: No space left on device")
                 and f"'{output}'" in err and "rerun" in err and "Traceback" not in full.stderr)
        intact = tree_md5s(data) == before
        left = temporaries(data)
        # Room made: the same command now succeeds and writes the same outputs.
        assert mount(data, size_kb * 4, remount=True).returncode == 0
        again = sh(*stage_cmd(stage), cwd=proj, check=False, timeout=900)
        same = again.returncode == 0 and tree_md5s(data) == before
        assert mount(data, size_kb, remount=True).returncode == 0
        survived = clear and intact and not left and same
        fault_log.record(
            "disk full while writing outputs", f"{stage}: {output} on a {size_kb} KB tmpfs with "
            f"{SPARE_KB} KB free", survived, data_lost=not intact, error=err, leftovers=left,
            rerun_ok=same,
            what="exit 2 and one paragraph naming the output and the fix; the previous outputs "
                 "unchanged, no temporary files left; the rerun with room succeeds")
        if not survived:
            failures.append((stage, full.returncode, err[-2000:], intact, left, same,
                             again.stderr[-1000:]))
    assert not failures, failures
