"""Configs: frozen models, YAML files, --set overrides and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field, ValidationError

from visae.config import FrozenConfig, apply_overrides, build_config, load_config, parse_override
from visae.errors import ConfigError


class Inner(FrozenConfig):
    depth: int = Field(2, description="a nested number")


class Demo(FrozenConfig):
    name: str = Field("x", description="a name")
    k: int = Field(64, description="a count")
    rate: float = Field(1e-3, description="a rate")
    inner: Inner = Field(default_factory=Inner, description="a nested section")


def test_defaults_and_frozen() -> None:
    cfg = build_config(Demo)
    assert cfg.k == 64
    with pytest.raises(ValidationError):
        cfg.k = 3  # type: ignore[misc]


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("k: 128\ninner:\n  depth: 5\n")
    cfg = load_config(Demo, path, ["rate=0.01", "inner.depth=7"])
    assert (cfg.k, cfg.rate, cfg.inner.depth) == (128, 0.01, 7)


def test_unknown_key_names_field(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kk: 3\n")
    with pytest.raises(ConfigError, match=r"kk: unknown key") as e:
        load_config(Demo, path)
    assert str(path) in str(e.value)


def test_wrong_type_names_field() -> None:
    with pytest.raises(ConfigError, match=r"inner\.depth"):
        build_config(Demo, {}, ["inner.depth=deep"])


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(Demo, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("k: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Demo, bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Demo, lst)


def test_yaml_is_parsed_safely(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Demo, path)


def test_parse_override() -> None:
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("x=[1, 2]") == (["x"], [1, 2])
    with pytest.raises(ConfigError):
        parse_override("novalue")
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}


def test_every_field_has_description() -> None:
    for cls in (Demo, Inner):
        for name, field in cls.model_fields.items():
            assert field.description, f"{cls.__name__}.{name} lacks a description"
