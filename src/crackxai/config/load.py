"""How a stage gets its configuration, validated before any work.

`conf/` (Hydra) is the single source of truth. DVC recomposes `params.yaml` from it on
`dvc exp run -S ...`; stages run by DVC read `params.yaml` (`--params params.yaml`), stages run by
hand compose `conf/` with Hydra overrides. Either way the result is validated here before any work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from crackxai.config.checks import check_values
from crackxai.config.schema import Config
from crackxai.core.errors import ConfigError


def validate(raw: DictConfig | dict, source: str = "configuration") -> Config:
    """Merge `raw` onto the schema: unknown keys, wrong types and impossible values fail here."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), raw)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        msg = str(exc).splitlines()[0]
        raise ConfigError(
            f"Invalid {source} at key '{key}': {msg}. Check the spelling and type against "
            f"conf/ (the schema is crackxai.config.Config)."
        ) from None
    check_values(cfg)
    return cfg


def find_conf_dir() -> Path:
    """`conf/` of the project in the working directory, else the one beside the package source."""
    for candidate in (Path.cwd() / "conf", Path(__file__).resolve().parents[3] / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise ConfigError(
        "No Hydra configuration found: expected conf/config.yaml in the working directory. "
        "Run the command from the crackxai project root."
    )


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose `conf/` with Hydra overrides (the same grammar as `dvc exp run -S`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(find_conf_dir()), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(
            f"Invalid override(s) {list(overrides or [])}: {reason} "
            f"Groups and options live in {find_conf_dir()}; see README 'Configuration'."
        ) from None


def load_params(path: str | Path) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Parameter file '{path}' not found. Regenerate it with `make params`.")
    try:
        return OmegaConf.load(path)  # type: ignore[return-value]
    except Exception as exc:  # YAML errors come in several types
        raise ConfigError(f"Cannot parse '{path}': {str(exc).splitlines()[0]}") from None


def load_config(args: list[str]) -> Config:
    """A stage's configuration from its command line.

    `--params FILE [key=value ...]`: the DVC path (FILE is params.yaml), dotted overrides applied on top.
    `[key=value | group=option ...]`: compose conf/ with Hydra overrides.
    """
    if args and args[0] == "--params":
        if len(args) < 2:
            raise ConfigError("--params needs a file, e.g. `--params params.yaml`.")
        raw = load_params(args[1])
        if args[2:]:
            raw = OmegaConf.merge(raw, OmegaConf.from_dotlist(args[2:]))
        return validate(raw, source=f"parameter in {args[1]}")
    return validate(compose(args), source="configuration")


def to_dict(cfg: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1e-3}} -> {'train.lr': 1e-3} (MLflow params use dotted keys)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
