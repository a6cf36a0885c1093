"""Validate: check the whole parameter file before any other stage runs, and write it resolved.

    python -m crackxai.validate --params params.yaml          # how dvc.yaml runs it

DVC deletes a stage's outputs just before it runs the stage's command, so a bad value found by
the stage itself (`dvc exp run -S train.epochs=0`) used to cost the last good model. This stage
is upstream of every other: it validates params.yaml in full with the config layer and stops the
pipeline with the config layer's one-paragraph message before any other stage's outputs are
touched.

It writes `reports/config/<section>.json`, one small file per config section (and `seed.json`),
sorted and resolved. Each stage depends on the files of the sections it lists in `params`, so a
change to explain.* reruns validate and explain only: the other files come out byte for byte
the same and their stages stay cached.
"""

from __future__ import annotations

from typing import Any

from crackxai.config import Config, to_dict
from crackxai.config.entry import run_stage
from crackxai.core.entry import log
from crackxai.core.io import write_json
from crackxai.core.paths import CONFIG_DIR

STAGE = "validate"


def main(cfg: Config) -> dict[str, Any]:
    resolved = to_dict(cfg)  # the whole config, as validated: every section, seed included
    for section, value in resolved.items():
        write_json(CONFIG_DIR / f"{section}.json", {section: value})
    log(STAGE, f"configuration valid; wrote {len(resolved)} sections to {CONFIG_DIR}/")
    return {}


if __name__ == "__main__":
    run_stage(STAGE, main)
