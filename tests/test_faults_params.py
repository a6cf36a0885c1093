"""Issue #13 item 1: a bad parameter never costs the last good outputs, and after a failed or
SIGKILLed `dvc repro` / `dvc exp run`, `make restore` (`touch params.yaml dvc.lock && git checkout
HEAD -- params.yaml dvc.lock && dvc checkout`) restores the last good state completely.

A real git + DVC project on the tiny config (tests/faults_support.tiny_project): the whole
pipeline run once and committed (the good state), then
- bad values through `dvc exp run -S` and through params.yaml edited by hand for `dvc repro`: the
  validate stage (upstream of every stage, so it fails before DVC deletes anything) stops with one
  paragraph naming the key, and every output is unchanged;
- `dvc exp run` with another learning rate and `dvc repro -f` SIGKILLed (the whole process group)
  at a seeded point after DVC has started the train stage (and so deleted its outputs).
Then the restore, and every output file must be identical to the good state and `dvc status`
clean. Why each part of it (found by this suite):
- `dvc.lock` too: DVC writes validate's new entry into dvc.lock when validate finishes, before
  train starts, so `git checkout params.yaml && dvc checkout` leaves validate's reports/config/ of
  the killed run's params;
- from `HEAD`: `dvc exp run` stages params.yaml and dvc.lock in git's index, from which a plain
  `git checkout <file>` restores;
- `touch` first: after a failed `dvc exp run -S train.epochs=0`, DVC puts HEAD back into git's
  index while params.yaml keeps `epochs: 0`, with the index's file size and time unchanged (the
  same length as `epochs: 2`), so git believes the file unchanged: `git status` is clean and
  `git checkout` skips it. A new mtime makes git compare the content.
The record says whether git's index was stale that way.
tests/test_validate.py checks the same promises on the default config (SIGTERM, plots).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import yaml

from tests.faults_support import Background, set_params, tiny_project, tree_md5s
from tests.test_faults_kill import fix_corrupt_rwlock
from tests.test_workflow import need_stages, sh

SEED = 1
FAULT = "bad parameter or killed run, then `make restore`"
WHAT = ("a bad value stops at validate with one paragraph naming the key, nothing deleted; after "
        "it or a killed run, `make restore` (`touch params.yaml dvc.lock && git checkout HEAD -- "
        "params.yaml dvc.lock && dvc checkout`) brings back every output byte for byte and "
        "`dvc status` is clean")
# the Makefile's `restore` target, command by command
RESTORE = (("touch", "-c", "params.yaml", "dvc.lock"),
           ("git", "checkout", "HEAD", "--", "params.yaml", "dvc.lock"),
           ("dvc", "checkout"))


def outputs(proj: Path) -> dict[str, str]:
    """Relative path -> md5 of every file of the DVC outputs (the train resume state is not one)."""
    found = {}
    for top in ("data", "models", "reports"):
        for rel, md5 in tree_md5s(proj / top).items():
            if ".train_state" not in Path(rel).parts:
                found[f"{top}/{rel}"] = md5
    return found


def validate_error(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("crackxai.validate: error:")]


def stale_index(proj: Path) -> bool:
    """params.yaml differs from HEAD while `git status` calls it unchanged."""
    shown = sh("git", "status", "--porcelain", "params.yaml", cwd=proj, check=False).stdout
    head = sh("git", "show", "HEAD:params.yaml", cwd=proj, check=False).stdout
    return not shown.strip() and (proj / "params.yaml").read_text() != head


def restore(proj: Path, good: dict[str, str]) -> tuple[bool, dict]:
    """RESTORE (`make restore`); (whether the state is the good one again, what it left)."""
    rwlock = fix_corrupt_rwlock(proj)  # a DVC killed mid-bookkeeping (see test_faults_kill.py)
    stale = stale_index(proj)
    ok = all(sh(*cmd, cwd=proj, check=False, timeout=600).returncode == 0 for cmd in RESTORE)
    status = sh("dvc", "status", "--json", cwd=proj, check=False)
    clean = status.returncode == 0 and json.loads(status.stdout or "{}") == {}
    left = sorted(p for p in good if outputs(proj).get(p) != good[p])
    return ok and clean and not left, {
        "dvc_rwlock_corrupted_and_removed": rwlock, "git_index_stale": stale,
        "restore_ok": ok, "dvc_status_clean": clean, "outputs_not_restored": left}


@pytest.mark.slow
def test_bad_value_or_killed_run_then_checkout_restores_everything(tmp_path: Path,
                                                                    fault_log) -> None:
    need_stages()
    proj = tiny_project(tmp_path / "proj")
    sh("dvc", "repro", cwd=proj, timeout=3600)
    sh("git", "add", "-A", cwd=proj)
    sh("git", "commit", "-qm", "good state", cwd=proj)
    good = outputs(proj)
    assert "models/model.keras" in good and "reports/explain/metrics.json" in good
    rng = random.Random(SEED)
    failures = []

    # Bad values: stopped at validate, before DVC deletes anything.
    for how, key, cmd in (
            ("`dvc exp run -S train.epochs=0`", "train.epochs",
             ["dvc", "exp", "run", *set_params("train.epochs=0")]),
            ("params.yaml edited to train.lr: -1, `dvc repro`", "train.lr", ["dvc", "repro"])):
        if key == "train.lr":
            params = yaml.safe_load((proj / "params.yaml").read_text())
            params["train"]["lr"] = -1
            (proj / "params.yaml").write_text(yaml.safe_dump(params))
        bad = sh(*cmd, cwd=proj, check=False, timeout=900)
        said = validate_error(bad.stdout + bad.stderr)
        clear = (bad.returncode != 0 and len(said) == 1 and f"'{key}'" in said[0]
                 and "Traceback" not in bad.stdout + bad.stderr)
        intact = outputs(proj) == good
        restored, detail = restore(proj, good)
        survived = clear and intact and restored
        fault_log.record(FAULT, f"bad value: {how}", survived, data_lost=not intact,
                         error=said, **detail, what=WHAT)
        if not survived:
            failures.append((how, bad.returncode, said, intact, detail))

    # Killed after DVC started train (it has deleted train's outputs by then).
    for how, cmd in (
            ("`dvc exp run -S train.lr=3e-4`", ["dvc", "exp", "run", *set_params("train.lr=3e-4")]),
            ("`dvc repro -f`", ["dvc", "repro", "-f"])):
        bg = Background(cmd, proj)
        assert bg.wait_for("Running stage 'train'", timeout=1800), bg.output[-3000:]
        delay = rng.uniform(0.5, 15.0)
        time.sleep(delay)
        was_running = bg.kill()
        changed = sorted(p for p in good if outputs(proj).get(p) != good[p])
        restored, detail = restore(proj, good)
        after = outputs(proj)
        lost = sorted(p for p in good if after.get(p) != good[p])
        survived = restored and not lost
        fault_log.record(FAULT, f"SIGKILL {delay:.1f} s into train of {how}", survived,
                         data_lost=bool(lost), killed_while_running=was_running,
                         changed_before_restore=len(changed), lost=lost, **detail, what=WHAT)
        if not survived:
            failures.append((how, lost, detail, bg.output[-2000:]))
    assert not failures, failures
