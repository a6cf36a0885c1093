"""The data sources by name (`data.source`): the one place a source name is spelled.

Each source module has `fetch(out, scratch, opts) -> manifest rows`: it fills `out` (the new
data/raw) with one folder per class (and `_masks/`), using `scratch` for downloads and archives.
Modules are imported on use, so the config layer can check `data.source` cheaply. A new source is
one file in data/ plus one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOURCES: dict[str, str] = {
    "synthetic": "crackxai.data.synthetic",
    "kaggle": "crackxai.data.kaggle",
    "local": "crackxai.data.local",
}


@dataclass(frozen=True)
class SourceOptions:
    """What a source may need (each reads only its own fields)."""

    seed: int
    limit_per_class: int | None = None
    path: str | None = None  # local: a folder or .zip
    kaggle_dataset: str = ""  # kaggle: owner/name
    n_per_class: int = 0  # synthetic
    image_size: int = 0  # synthetic
    difficulty: float = 0.0  # synthetic
    api: Any = None  # kaggle: a client to use instead of a fresh authenticated one


def fetch(name: str, out: Path, scratch: Path, opts: SourceOptions) -> list[dict[str, Any]]:
    """Run source `name` (a key of SOURCES)."""
    return importlib.import_module(SOURCES[name]).fetch(out, scratch, opts)
