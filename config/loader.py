"""The one configuration loader: embedded defaults, merged with an operator's YAML file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from config.schema import AppConfig


class ConfigError(ValueError):
    """A configuration file is unreadable or invalid; the message names the file and the key."""


def default_config_path() -> Path:
    return Path(__file__).with_name("default.yaml")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot read: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: top level must be a mapping, got {type(data).__name__}")
    return data


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge ``override`` over ``base``: mappings key by key, everything else replaced whole."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _route_name(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    """`` (route 'ct-lungs')`` for an error inside ``routes.N``, so the operator sees the rule."""
    routes = data.get("routes")
    if len(loc) < 2 or loc[0] != "routes" or not isinstance(loc[1], int):
        return ""
    route = routes[loc[1]] if isinstance(routes, list) and loc[1] < len(routes) else None
    return f" (route {route['name']!r})" if isinstance(route, dict) and "name" in route else ""


def _format_errors(path: Path | str, exc: ValidationError, data: dict[str, Any]) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {loc}{_route_name(tuple(err['loc']), data)}: {err['msg']}")
    return f"config {path}: invalid:\n" + "\n".join(lines)


def load_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> AppConfig:
    """Load the embedded defaults, merge ``path`` (if given) and ``overrides`` over them, validate.

    Relative ``node.data_dir`` and model paths stay relative to the working directory, as an
    operator typing them expects.
    """
    data = _read_yaml(default_config_path())
    source: Path | str = default_config_path()
    if path is not None:
        source = Path(path)
        data = merge(data, _read_yaml(source))
    if overrides:
        data = merge(data, overrides)
    try:
        return AppConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc, data)) from None
