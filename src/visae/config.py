"""Configuration: frozen pydantic v2 models, YAML files and ``--set key=value`` overrides.

Every stage's config is a subclass of :class:`FrozenConfig` defined beside the stage (``cache.config``,
``sae.train``, ``metrics.*`` …) and re-exported from here. Unknown keys and wrong types are errors that
name the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from visae.errors import ConfigError, ConfigValueError

C = TypeVar("C", bound="FrozenConfig")


class FrozenConfig(BaseModel):
    """Base of every config: immutable, no unknown keys, a description on every field."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, protected_namespaces=())

    def __init__(self, /, **data: Any) -> None:
        """Validate ``data``; a bad field is a ConfigError naming it in words (not a raw pydantic dump)."""
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigValueError(_format_validation_error(e, type(self).__name__)) from None

    # Pydantic calls a custom __init__ from validation too (nested models, model_validate); marked as its
    # base init, this one runs only for direct construction, so nested errors keep their full field path.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (paths as strings)."""
        return self.model_dump(mode="json")


def _format_validation_error(err: ValidationError, source: str) -> str:
    """One line: the source, then ``field: what is wrong (got value)`` for each bad field."""
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            problems.append(f"{loc}: unknown key")
            continue
        msg = re.sub(r"^(Value|Assertion) error, ", "", e["msg"]).replace("Input should be", "should be")
        got = e.get("input")
        shown = "" if not loc or isinstance(got, dict) else f" (got {got!r})"
        problems.append(f"{loc}: {msg}{shown}" if loc else msg)
    return f"{source}: invalid configuration: " + "; ".join(problems)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into a key path and a YAML-parsed value (so ``k=3`` is an int)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key.path=value`` override set."""
    out: dict[str, Any] = _deep_copy(data)
    for text in overrides or []:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            nxt = node.get(k)
            if not isinstance(nxt, dict):
                nxt = {}
                node[k] = nxt
            node = nxt
        node[keys[-1]] = value
    return out


def _deep_copy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}


def read_yaml(path: Path | str) -> dict[str, Any]:
    """Read a YAML mapping safely (no arbitrary objects); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def build_config(cls: type[C], data: dict[str, Any] | None = None, overrides: list[str] | None = None,
                 source: str = "config") -> C:
    """Validate ``data`` (plus overrides) into ``cls``; a ConfigError names each bad field."""
    merged = apply_overrides(data or {}, overrides)
    try:
        return cls.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


def load_config(cls: type[C], path: Path | str | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> C:
    """Load ``cls`` from an optional YAML file, on top of ``base``, then apply ``--set`` overrides."""
    data = dict(base or {})
    source = "config"
    if path is not None:
        data.update(read_yaml(path))
        source = str(path)
    return build_config(cls, data, overrides, source=source)


def dump_yaml(cfg: BaseModel) -> str:
    """YAML text of a config (JSON-compatible values)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
