"""Regenerate params.yaml from conf/ exactly as `dvc exp run -S ...` does (DVC's own composer).

    python -m crackxai.params [override ...]     # e.g. experiment=smoke
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from crackxai.config import find_conf_dir


def write_params(output: str | Path = "params.yaml", overrides: list[str] | None = None) -> None:
    from dvc.utils.hydra import compose_and_dump

    conf_dir = find_conf_dir().resolve()
    compose_and_dump(Path(output), str(conf_dir), None, "config", str(conf_dir.parent),
                     list(overrides or []))


def main(argv: list[str] | None = None) -> None:
    """`python -m crackxai.params [override ...]`: write params.yaml in the working directory."""
    write_params("params.yaml", list(sys.argv[1:] if argv is None else argv))
    logging.getLogger("crackxai.params").info("wrote params.yaml")
