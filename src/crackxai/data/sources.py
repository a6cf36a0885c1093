"""The data sources by name (`data.source`): the one place a source name is spelled."""

from __future__ import annotations

SOURCES: tuple[str, ...] = ("synthetic", "kaggle", "local")
