"""How a stage gets its configuration, validated before any work.

`conf/` (Hydra) is the single source of truth for values; the schema (schema.py) holds the types.
DVC recomposes `params.yaml` from conf/ on `dvc exp run -S ...`; stages run by DVC read it
(`--params params.yaml [key=value ...]`), stages run by hand compose `conf/` with Hydra overrides.
Either way the result is checked here, key by key, before any work: an unknown key gets a
"did you mean ...?", and every message says whether the value came from the command line, conf/
or the parameter file.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from crackxai.config.checks import check_values
from crackxai.config.schema import Config, leaf_types, section_keys
from crackxai.core.errors import ConfigError, first_line

COMMAND_LINE = "from the command line"


# ---------------------------------------------------------------------------------------------
# Keys: what the schema knows, and the closest known key to a misspelt one
# ---------------------------------------------------------------------------------------------


def did_you_mean(key: str) -> str:
    """' Did you mean `train.lr`?' for 'trian.lr' (difflib on the schema's dotted keys), or ''."""
    leaves = list(leaf_types())
    known = leaves + sorted(section_keys())
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    last = key.rsplit(".", 1)[-1]  # 'lr' alone, or 'training.lr': same last part
    same_name = [k for k in leaves if k.rsplit(".", 1)[-1] == last and k != key]
    candidates = close or same_name[:3]
    if not candidates:
        return ""
    return " Did you mean " + " or ".join(f"`{k}`" for k in candidates) + "?"


def _is_known(key: str) -> bool:
    """A schema leaf or section, or an element/sub-key of a leaf (explain.images.0)."""
    if key in section_keys():
        return True
    parts = key.split(".")
    return any(".".join(parts[:i]) in leaf_types() for i in range(1, len(parts) + 1))


def _unknown_key_error(key: str, where: str, fix: str) -> ConfigError:
    return ConfigError(f"Unknown key '{key}' ({where}): the schema (crackxai.config.Config, "
                       f"values in conf/) has no such key.{did_you_mean(key)} {fix}".rstrip())


def _unknown_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys in a nested mapping that the schema does not know (not descending into them)."""
    out: list[str] = []
    if isinstance(node, Mapping):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if not _is_known(key):
                out.append(key)
            elif key in section_keys():
                out += _unknown_keys(v, key + ".")
    return out


def _touches(key: str, overridden: set[str]) -> bool:
    """Whether the value(s) behind `key` (or 'a + b') include one set as one of `overridden`."""
    return any(p == o or p.startswith(o + ".") or o.startswith(p + ".")
               for p in key.split(" + ") for o in overridden)


# ---------------------------------------------------------------------------------------------
# Validation: a complete raw configuration -> a typed Config
# ---------------------------------------------------------------------------------------------


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` on top of `base` (plain containers): mappings merge key by key, the rest replaces."""
    out = dict(base)
    for k, v in over.items():
        both = isinstance(out.get(k), Mapping) and isinstance(v, Mapping)
        out[k] = _deep_merge(out[k], v) if both else v
    return out


def _shape_problem(node: Any, prefix: str = "") -> tuple[str, str] | None:
    """The first key whose value has the wrong shape: a section that is not a mapping, a list leaf
    that is not a list, a scalar leaf that is a list or mapping (OmegaConf's own errors for these
    often lose the key)."""
    if not isinstance(node, Mapping):
        return prefix.rstrip(".") or "(top level)", "a mapping of keys"
    for k, v in node.items():
        key = f"{prefix}{k}"
        if key in section_keys():
            if not isinstance(v, Mapping):
                return key, "a section (a mapping of keys, as in conf/)"
            problem = _shape_problem(v, key + ".")
            if problem:
                return problem
        elif key in leaf_types() and v != MISSING:
            is_list = typing.get_origin(leaf_types()[key]) is list
            if is_list and not isinstance(v, list | tuple | ListConfig):
                return key, "a list, e.g. [a, b]"
            if not is_list and isinstance(v, Mapping | list | tuple | ListConfig):
                return key, "a single value, not a list or mapping"
    return None


def validate(raw: DictConfig | Mapping[str, Any], source: str = "configuration",
             overridden: set[str] | None = None, overridden_from: str = COMMAND_LINE) -> Config:
    """A complete raw configuration (conf/ composed, or params.yaml) checked against the schema.

    Unknown keys, wrong types, missing values (`???`) and impossible values fail here with a
    ConfigError naming the key. `source` says where `raw` came from ("params.yaml", "conf/");
    keys in `overridden` are reported as `overridden_from`. For a partial configuration
    on top of the defaults, use `default_config(values)`.
    """
    overridden = overridden or set()

    def origin(key: str) -> str:
        return overridden_from if _touches(key, overridden) else f"from {source}"

    container = (OmegaConf.to_container(raw, resolve=False) if isinstance(raw, DictConfig)
                 else raw)
    for key in _unknown_keys(container):
        raise _unknown_key_error(key, origin(key), f"Fix or remove it in {source}.")
    problem = _shape_problem(container)
    if problem:
        key, allowed = problem
        raise ConfigError(f"Invalid value for '{key}' ({origin(key)}): it must be {allowed}. "
                          "Compare with conf/ (the schema is crackxai.config.Config).")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), container)
        missing = sorted(OmegaConf.missing_keys(merged))
        cfg: Config = None if missing else OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:  # a wrong type, an interpolation that does not resolve
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(f"Invalid value for '{key}' ({origin(key)}): "
                          f"{first_line(exc)}. Check its type against conf/ (the "
                          "schema is crackxai.config.Config).") from None
    if missing:
        key = missing[0]
        fix = (f"set it in {source} or after `--params {source}`, e.g. `{key}=...` (`make "
               "params` regenerates the file from conf/)" if source != "conf/" else
               f"give it on the command line, e.g. `{key}=...`")
        raise ConfigError(f"No value for '{key}' ({origin(key)}: it is `???`, i.e. required): "
                          f"{fix}." + (f" Also missing: {', '.join(missing[1:])}."
                                       if missing[1:] else ""))
    check_values(cfg, origin)
    return cfg


# ---------------------------------------------------------------------------------------------
# conf/ (Hydra)
# ---------------------------------------------------------------------------------------------


def find_conf_dir() -> Path:
    """`conf/` of the project in the working directory, else the one beside the package source."""
    for candidate in (Path.cwd() / "conf", Path(__file__).resolve().parents[3] / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise ConfigError(
        "No Hydra configuration found: expected conf/config.yaml in the working directory. "
        "Run the command from the crackxai project root."
    )


def _is_group(key: str, conf_dir: Path) -> bool:
    return "/" in key or (conf_dir / key).is_dir() or key == "hydra" or key.startswith("hydra.")


def _override_keys(overrides: list[str], conf_dir: Path) -> set[str]:
    """The dotted keys the Hydra overrides set (group selections left out); unknown ones fail."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides=list(overrides))
    except HydraException as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"Cannot parse the override(s) {list(overrides)} {COMMAND_LINE}: "
                          f"{reason} Overrides are key=value or group=option.") from None
    keys: set[str] = set()
    for o in parsed:
        key = o.key_or_group
        if _is_group(key, conf_dir):
            continue
        if not _is_known(key):
            raise _unknown_key_error(key, f"in `{o.input_line}` {COMMAND_LINE}",
                                     "Keys are dotted paths as in params.yaml; groups "
                                     f"({', '.join(_groups(conf_dir))}) take an option name.")
        keys.add(key)
    return keys


def _groups(conf_dir: Path) -> list[str]:
    return sorted(p.name for p in conf_dir.iterdir() if p.is_dir())


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose `conf/` with Hydra overrides (the same grammar as `dvc exp run -S`)."""
    conf_dir = find_conf_dir()
    overrides = list(overrides or [])
    _override_keys(overrides, conf_dir)  # unknown keys: did you mean ...?
    return _compose(overrides, conf_dir)


def _compose(overrides: list[str], conf_dir: Path) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        reason = " ".join(str(exc).split()).split(" Config search path")[0]  # Hydra internals
        raise ConfigError(
            f"Invalid override(s) {overrides} {COMMAND_LINE}: {reason}. "
            f"Groups and options live in {conf_dir}; see README 'Configuration'."
        ) from None


def default_config(values: Mapping[str, Any] | None = None) -> Config:
    """The defaults (conf/ composed with no overrides), with `values` (nested, as in params.yaml)
    merged on top, validated: what `Config()` gave when the dataclasses held defaults."""
    raw: Any = OmegaConf.to_container(compose([]), resolve=False)
    if values:
        for key in _unknown_keys(values):
            raise _unknown_key_error(key, "in the values given to default_config", "")
        raw = _deep_merge(raw, values)
    return validate(raw, source="conf/", overridden=set(_flat_keys(values or {})),
                    overridden_from="from the values given to default_config")


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


def load_params(path: str | Path) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Parameter file '{path}' not found. Regenerate it with `make params`.")
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # YAML errors come in several types
        raise ConfigError(f"Cannot parse '{path}': {first_line(exc)}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"'{path}' is not a mapping of sections (data:, train:, ...). "
                          "Regenerate it with `make params`.")
    return loaded


def _dotted_overrides(file: str, args: list[str]) -> dict[str, Any]:
    """`key=value` arguments given after `--params FILE`, each key checked against the schema."""
    conf_dir = _conf_dir_or_none()
    out: dict[str, Any] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+")  # Hydra's +key / ++key: the key exists anyway or fails below
        if not sep or not key or key.startswith("~"):
            raise ConfigError(
                f"Override `{arg}` {COMMAND_LINE}: with --params {file}, overrides are dotted "
                f"`key=value` pairs, e.g. `train.lr=1e-4`.")
        is_group = conf_dir is not None and (conf_dir / key).is_dir()
        if key in section_keys() or is_group:
            example = f"{key}.source={value}" if key == "data" else f"{key}.<key>=<value>"
            raise ConfigError(
                f"`{arg}` {COMMAND_LINE} selects a conf/ group option, which --params {file} "
                f"cannot do: with --params, overrides are dotted keys (e.g. `{example}`). Or "
                f"drop `--params {file}` to compose conf/ with `{arg}`.")
        if not _is_known(key):
            raise _unknown_key_error(key, f"in `{arg}` {COMMAND_LINE}",
                                     "Keys are dotted paths as in the parameter file.")
        try:  # the value as YAML, as OmegaConf reads `key=value`
            out[key] = OmegaConf.to_container(OmegaConf.from_dotlist([f"{key}={value}"]),
                                              resolve=False)
        except Exception as exc:  # YAML errors come in several types
            raise ConfigError(f"Cannot read the value of `{arg}` {COMMAND_LINE}: "
                              f"{first_line(exc)}") from None
    return out


def _conf_dir_or_none() -> Path | None:
    try:
        return find_conf_dir()
    except ConfigError:
        return None


def load_config(args: list[str]) -> Config:
    """A stage's configuration from its command line.

    `--params FILE [key=value ...]`: the DVC path (FILE is params.yaml), dotted overrides applied on top.
    `[key=value | group=option ...]`: compose conf/ with Hydra overrides.
    """
    if args and args[0] == "--params":
        if len(args) < 2:
            raise ConfigError("--params needs a file, e.g. `--params params.yaml`.")
        file, rest = args[1], args[2:]
        overrides = _dotted_overrides(file, rest)
        raw: Any = OmegaConf.to_container(load_params(file), resolve=False)
        for key in _unknown_keys(raw):  # before the overrides: a typo there is the file's
            raise _unknown_key_error(key, f"from {file}",
                                     f"Fix or remove it there, or regenerate {file} with "
                                     "`make params`.")
        for value in overrides.values():
            raw = _deep_merge(raw, value)
        return validate(raw, source=file, overridden=set(overrides))
    conf_dir = find_conf_dir()
    overridden = _override_keys(args, conf_dir)
    return validate(_compose(list(args), conf_dir), source="conf/", overridden=overridden)


# ---------------------------------------------------------------------------------------------
# Plain dicts (MLflow params use dotted keys)
# ---------------------------------------------------------------------------------------------


def to_dict(cfg: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def explainer_settings(cfg: Config, method: str) -> dict[str, Any]:
    """The keyword arguments for crackxai.xai.registry.create(method, ...) besides the model,
    predictor and layer: the seed, explain.cam_min_size and the explain.<method> section (if
    the method has one), so the explain stage and explain_image build a method alike."""
    return {"seed": cfg.seed, "cam_min_size": cfg.explain.cam_min_size,
            **to_dict(cfg)["explain"].get(method, {})}


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


def _flat_keys(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in values.items():
        key = f"{prefix}{k}"
        out += _flat_keys(v, key + ".") if isinstance(v, Mapping) else [key]
    return out
