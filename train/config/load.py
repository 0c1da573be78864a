"""Build an ExperimentConfig from defaults, a YAML file and dotted overrides.

Precedence: schema defaults, then the YAML file, then `a.b.c=value` overrides
(values parsed as YAML scalars, so `3e-4`, `true`, `[0.9, 0.95]` work).
Every failure is a ConfigError whose message is one line naming the key and
the file, ready to print.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from data_pipeline.errors import GobigError
from train.config.schema import ExperimentConfig


class ConfigError(GobigError, ValueError):
    """A config that cannot be used; str() is a one-line message for the user."""


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Turn `a.b=1` strings into a nested dict.

    Args:
        overrides: strings of the form `dotted.key=value`.
    """
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(nested, key.split("."), value)
    return nested


def _set_dotted(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        child = tree.setdefault(key, {})
        if not isinstance(child, dict):
            child = tree[key] = {}
        tree = child
    tree[keys[-1]] = value


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `top` over `base` (dicts merge, everything else replaces)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; ConfigError names the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def build_config(data: dict[str, Any], origin: str = "config") -> ExperimentConfig:
    """Validate a nested dict into an ExperimentConfig.

    Args:
        data: sections as nested dicts (from YAML, overrides or `to_dict()`).
        origin: what to name in error messages (usually the YAML path).
    """
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {_first_error(exc)}") from None
    except ValueError as exc:  # raised by ModelConfig.__post_init__ and validators
        raise ConfigError(f"{origin}: {exc}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(part) for part in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"{key}: unknown key"
    if msg.startswith(key.split(".")[0] + ".") or not key:
        return msg  # the message already names its field
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    return f"{key}: {msg}{shown}"


def load_config(
    path: str | Path | None = None, overrides: Iterable[str] = (), check_paths: bool = True
) -> ExperimentConfig:
    """Defaults, then the YAML file (if any), then dotted overrides.

    Args:
        path: YAML file; None for the schema defaults alone.
        overrides: `dotted.key=value` strings, applied last.
        check_paths: fail if a local data path named by the config is missing.
    """
    origin = str(path) if path is not None else "defaults"
    data = read_yaml(path) if path is not None else {}
    override_tree = parse_overrides(overrides)
    if overrides:
        origin += " with overrides"
    config = build_config(merge(data, override_tree), origin)
    if check_paths:
        _check_local_paths(config, origin)
    return config


def _check_local_paths(config: ExperimentConfig, origin: str) -> None:
    # Remote sources (URLs, pipes, brace patterns, builtin corpora) are checked
    # by the loader when it opens them; plain local paths can fail fast here.
    for key, value in (
        ("data.source", config.data.source),
        ("data.val_source", config.data.val_source),
        ("data.tokenizer", config.data.tokenizer),
    ):
        if value is None or _is_remote_or_pattern(value):
            continue
        if not Path(value).exists():
            raise ConfigError(f"{origin}: {key}: no such file or directory: {value}")


def _is_remote_or_pattern(spec: str) -> bool:
    return (
        "://" in spec or spec.startswith(("pipe:", "builtin:")) or any(ch in spec for ch in "{}*?[")
    )
