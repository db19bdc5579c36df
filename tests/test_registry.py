"""The one registry type: registration, duplicates, aliases, lazy entries, errors and listing."""

from __future__ import annotations

import pytest

from visae.errors import ConfigError, DataError
from visae.registry import Registry


def test_register_by_call_and_decorator() -> None:
    reg: Registry[object] = Registry("widget")
    first = object()
    assert reg.register("a", first, summary="the first") is first

    @reg.register("b", aliases=("bee", "B-2"))
    def second() -> None: ...

    assert reg["a"] is first and reg["b"] is second and reg["bee"] is second and reg["B-2"] is second
    assert list(reg) == ["a", "b"] and len(reg) == 2 and "bee" in reg and "c" not in reg
    assert reg.canonical("bee") == "b" and reg.aliases("b") == ["B-2", "bee"]
    assert reg.listing() == ["a — the first", "b [B-2, bee]"]


def test_duplicates_are_refused_unless_overwrite() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("a", 1, aliases=("x",))
    with pytest.raises(ConfigError, match="widget 'a' is already registered"):
        reg.register("a", 2)
    with pytest.raises(ConfigError, match="already an alias of 'a'"):
        reg.register("x", 3)
    with pytest.raises(ConfigError, match="alias 'x' is already taken"):
        reg.register("b", 4, aliases=("x",))
    with pytest.raises(ConfigError, match="alias 'a' is already taken"):
        reg.register("c", 5, aliases=("a",))
    assert reg["a"] == 1 and "b" not in reg and "c" not in reg
    reg.register("a", 6, overwrite=True)
    assert reg["a"] == 6


def test_unknown_name_lists_the_known_ones_with_the_registry_error() -> None:
    reg: Registry[int] = Registry("image source", error=DataError)
    reg.register("folder", 1)
    reg.register("hf", 2)
    with pytest.raises(DataError, match=r"unknown image source 'nope'; known: folder, hf"):
        reg["nope"]
    assert reg.find("nope") is None and reg.find("hf") == 2


def test_lazy_entry_is_imported_on_first_lookup_and_fulfilled_by_its_own_registration() -> None:
    reg: Registry[object] = Registry("thing")
    reg.register_lazy("dump", "json:dumps", summary="JSON text")
    reg.register_lazy("missing", "json:no_such_function")
    import json

    reg.register("dump", json.dumps)  # the target registering itself is not a duplicate
    assert reg["dump"] is json.dumps and reg.summary("dump") == "JSON text"
    with pytest.raises(ConfigError, match="has no attribute 'no_such_function'"):
        reg["missing"]
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("dump", json.loads)  # another object under the same name is
    with pytest.raises(ConfigError, match=r"must read 'package\.module:attribute'"):
        reg.register_lazy("bad", "json.dumps")
    reg.register_lazy("gone", "visae_no_such_module:thing")
    with pytest.raises(ModuleNotFoundError):  # a broken plugin surfaces, it is not reported as 'unknown'
        reg["gone"]


def test_normalize_folds_names() -> None:
    reg: Registry[int] = Registry("family", normalize=str.lower)
    reg.register("TopK", 1, aliases=("Top-K",))
    assert reg["topk"] == 1 and reg["TOP-k"] == 1 and reg.canonical("TOPK") == "topk"
    reg.unregister("top-k")
    assert "topk" not in reg and "top-k" not in reg


def test_every_builtin_registry_resolves_and_refuses_duplicates() -> None:
    from visae.backbones.registry import BACKBONES
    from visae.datasets.registry import SOURCES
    from visae.metrics.base import METRICS, Metric, MetricConfig, register_metric
    from visae.sae.registry import SAE_FAMILIES
    from visae.tasks.registry import TASKS

    assert METRICS.names() == ["m1", "raw", "m2", "m3", "m4", "m5", "m6", "m7", "m5d", "recovery"]
    for name in METRICS:
        assert METRICS[name].name == name and issubclass(METRICS[name].config_cls, MetricConfig)
        assert METRICS[name].config_cls is not MetricConfig  # typed by Metric[Config]
    assert SAE_FAMILIES["Batch-TopK"].family == "batchtopk" and SAE_FAMILIES["standard"].family == "relu"
    assert {TASKS[n].defaults.get("name", n) for n in TASKS} == set(TASKS)
    assert callable(SOURCES["fmnist"]) and {"dinov2-b14", "random-vit-s14"} <= set(BACKBONES)

    class Imposter(Metric[MetricConfig]):
        name = "m2"

    with pytest.raises(ConfigError, match="metric 'm2' is already registered"):
        register_metric(Imposter)
    assert METRICS["m2"].__name__ == "M2Reconstruction"


def test_register_package_adds_lazy_entries() -> None:
    reg: Registry[object] = Registry("codec")
    reg.register_package("json", [("dump", "decoder:JSONDecoder", "a decoder class")])
    import json

    assert reg["dump"] is json.JSONDecoder and reg.listing() == ["dump — a decoder class"]
