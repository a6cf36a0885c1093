"""Where this process sits in a multi-worker cluster: TF_CONFIG written from a worker list and
read back, import-light (no TensorFlow), so the launcher (crackxai train_worker) starts fast.

Every host gets the same worker list; worker 0 is the chief, which writes the outputs and the
MLflow run (crackxai.stages.train).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from crackxai.core.errors import CrackxaiError

TF_CONFIG = "TF_CONFIG"


@dataclass(frozen=True)
class Worker:
    """This process's place in the cluster: `index` of `count`; the chief (index 0) writes."""

    index: int = 0
    count: int = 1

    @property
    def is_chief(self) -> bool:
        return self.index == 0


def tf_config(workers: list[str], index: int) -> dict:
    """TF_CONFIG for worker `index` of `workers` ("host:port" each, the same list on every
    host); worker 0 is the chief."""
    bad = [w for w in workers if w.count(":") != 1 or not w.rsplit(":", 1)[1].isdigit()]
    if not workers or bad:
        raise CrackxaiError(
            f"Workers {workers} must be a non-empty list of host:port (bad: {bad}), the same list "
            "on every host, e.g. --workers node1:12345,node2:12345.")
    if not 0 <= index < len(workers):
        raise CrackxaiError(f"Worker index {index} is not in 0..{len(workers) - 1} for "
                            f"{len(workers)} workers; give each host its own index, the chief 0.")
    return {"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": index}}


def worker_from_env() -> Worker:
    """This process's Worker from TF_CONFIG (the chief of one when unset)."""
    raw = os.environ.get(TF_CONFIG)
    if not raw:
        return Worker()
    try:
        cfg = json.loads(raw)
        task, workers = cfg["task"], cfg["cluster"]["worker"]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CrackxaiError(
            f"{TF_CONFIG} is not a valid cluster description ({exc!r}): it must be JSON like "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", '
            '"index": 0}}. `crackxai train_worker` writes it for you.') from None
    if task.get("type") != "worker" or "chief" in cfg["cluster"]:
        raise CrackxaiError(f"{TF_CONFIG} task {task}: only 'worker' tasks are supported (worker "
                            "0 is the chief); a separate 'chief' task is not.")
    return Worker(index, len(workers))
