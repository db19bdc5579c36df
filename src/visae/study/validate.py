"""Everything a study YAML can get wrong that is knowable without computing, each problem named by the YAML
path of its key: metric names and settings, training and cache settings, layers against each backbone's
depth, K against the dictionary size, SAE families, task kinds and settings, image-set names and splits,
and the hypotheses' metrics and tasks. ``visae study run --dry-run`` reports them all at once.

Backbone depth and width come from the backbone registry: a shape the entry declares, else the architecture
alone (timm models are built on the ``meta`` device: no weights, no memory; a plugin's backbone without a
timm name is built without pretrained weights); a backbone whose architecture cannot be read that way is not
checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from visae.study.config import StudyConfig

def _model_problems(cls: type[BaseModel], data: Mapping[str, Any], where: str) -> list[str]:
    """``where.<field>: what is wrong`` for every field of ``data`` that ``cls`` refuses."""
    try:
        cls.model_validate(dict(data))
    except ValidationError as e:
        out = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            key = f"{where}.{loc}" if loc else where
            msg = ("unknown key" if err["type"] == "extra_forbidden" else
                   err["msg"].removeprefix("Value error, ").replace("Input should be", "should be"))
            got = "" if not loc or isinstance(err.get("input"), dict) else f" (got {err.get('input')!r})"
            out.append(f"{key}: {msg}{got}")
        return out
    except Exception as e:  # a validator raising a visae error directly
        return [f"{where}: {e}"]
    return []


def backbone_shape(name: str) -> tuple[int, int] | None:
    """(blocks, width) of a backbone from its architecture, or None when it cannot be read cheaply."""
    try:
        from visae.backbones.registry import _split_wrapper, backbone_entry

        split = _split_wrapper(name)
        if split is not None:  # a wrapper (shuffled:<name>) keeps its inner backbone's shape
            return backbone_shape(split[1])
        entry = backbone_entry(name)
        if entry is not None and entry.shape is not None:  # declared in the registry
            return entry.shape
        arch = entry.timm_name if entry is not None else name
        if arch is None:  # a plugin's own backbone: build it without pretrained weights (test-sized ones)
            from visae.backbones.registry import load_backbone

            bb = load_backbone(name, device="cpu", pretrained=False)
            return bb.n_blocks, bb.d_model
        import timm
        import torch

        if not timm.is_model(arch.split(".", 1)[0]):
            return None
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, num_classes=0)
        blocks = getattr(model, "blocks", None)
        width = getattr(model, "embed_dim", None) or getattr(model, "num_features", None)
        return (len(blocks), int(width)) if blocks is not None and width else None
    except Exception:  # an exotic architecture: not checked here, the cache job will say
        return None


def _metric_problems(cfg: StudyConfig) -> list[str]:
    from visae.metrics.base import METRICS

    known = METRICS.names()
    out = [f"metrics[{i}]: unknown metric {m!r}; known: {', '.join(known)}"
           for i, m in enumerate(cfg.metrics) if m not in METRICS]
    for j, grid in enumerate(cfg.saes):
        out += [f"saes[{j}].metrics[{i}]: unknown metric {m!r}; known: {', '.join(known)}"
                for i, m in enumerate(grid.metrics or []) if m not in METRICS]
    for name, section in cfg.metric_configs.items():
        if name not in METRICS:
            out.append(f"metric_configs.{name}: unknown metric; sections are metric names "
                       f"({', '.join(known)})")
            continue
        out += _model_problems(METRICS[name].config_cls, section, f"metric_configs.{name}")
    run = {"raw"}.union(cfg.metrics, *(grid.metrics or [] for grid in cfg.saes))  # raw: its own job
    out += [f"metric_configs.{name}: settings for {name}, which no SAE block runs (metrics: "
            f"{', '.join(sorted(run))}); add {name} to 'metrics' or drop the section"
            for name in cfg.metric_configs if name in METRICS and name not in run]
    return out


def _own(problems: list[str], where: str, keys: Mapping[str, Any]) -> list[str]:
    """The problems whose key is one of ``keys`` (settings merged over shared ones report only their own)."""
    return [p for p in problems if p.split(":", 1)[0].removeprefix(f"{where}.").split(".")[0] in keys]


def _settings_problems(cfg: StudyConfig) -> list[str]:
    from visae.cache.config import CacheConfig
    from visae.sae.train import TrainConfig

    fixed = ("backbone", "source", "layer", "out")  # the study sets these per cache job
    out = []
    for where, section in (("cache", cfg.cache), ("train_cache", cfg.train_cache)):
        out += [f"{where}.{k}: set by the study for each cache job; remove it" for k in fixed if k in section]
    shared = {k: v for k, v in cfg.cache.items() if k not in fixed}
    out += _model_problems(CacheConfig, shared, "cache")
    own = {k: v for k, v in cfg.train_cache.items() if k not in fixed}
    out += _own(_model_problems(CacheConfig, {**shared, **own}, "train_cache"), "train_cache", own)
    out += _model_problems(TrainConfig, cfg.train, "train")
    for j, grid in enumerate(cfg.saes):
        where = f"saes[{j}].train"
        out += _own(_model_problems(TrainConfig, {**cfg.train, **grid.train}, where), where, grid.train)
    return out


def _grid_problems(cfg: StudyConfig) -> list[str]:
    from visae.errors import ConfigError
    from visae.sae.registry import SAE_FAMILIES, canonical_family, check_hparams

    out = []
    shapes = {b.name: backbone_shape(b.name) for b in cfg.backbones}
    for i, b in enumerate(cfg.backbones):
        shape = shapes[b.name]
        for li, layer in enumerate(cfg.layers):
            if shape is not None and not 0 <= layer < shape[0]:
                out.append(f"layers[{li}]: {layer} is not a block of {b.name} (backbones[{i}]), which has "
                           f"blocks 0..{shape[0] - 1}")
    first: dict[str, int] = {}
    for j, grid in enumerate(cfg.saes):
        if grid.name in first:
            out.append(f"saes[{j}].name: {grid.name!r} is already the name of saes[{first[grid.name]}]"
                       f"{' (the default)' if grid.name == 'main' else ''}; give every block its own name "
                       "(it tags the block's SAEs in the results)")
        first.setdefault(grid.name, j)
    for j, grid in enumerate(cfg.saes):
        try:
            family = canonical_family(grid.family)
        except ConfigError as e:
            out.append(f"saes[{j}].family: {e}")
            continue
        try:
            check_hparams(family, dict(grid.hparams or {}))
        except ConfigError as e:
            out.append(f"saes[{j}].{e}")
        names = grid.backbones or [b.name for b in cfg.backbones]
        for li, layer in enumerate(grid.layers or []):
            for name in names:
                shape = shapes.get(name)
                if shape is not None and not 0 <= layer < shape[0]:
                    out.append(f"saes[{j}].layers[{li}]: {layer} is not a block of {name}, which has blocks "
                               f"0..{shape[0] - 1}")
        if not SAE_FAMILIES[family].needs_k:
            continue
        for name in names:
            shape = shapes.get(name)
            if shape is None:
                continue
            for ei, x in enumerate(grid.expansions):
                for ki, k in enumerate(grid.ks):
                    if k > x * shape[1]:
                        out.append(f"saes[{j}].ks[{ki}]: K={k} exceeds the dictionary size {x * shape[1]} of "
                                   f"expansion {x} (saes[{j}].expansions[{ei}]) on {name} (width {shape[1]})")
    return out


def _data_problems(cfg: StudyConfig) -> list[str]:
    from visae.datasets.registry import SOURCES, SPLITS, known_sources

    out: list[str] = []
    roles: dict[str, Any] = {"data.train": cfg.data.train, "data.eval": cfg.data.eval,
             **{f"data.ood.{k}": v for k, v in cfg.data.ood.items()},
             **{f"data.task_sources.{k}": v for k, v in cfg.data.task_sources.items()}}
    known_roles = {"train", "eval", *cfg.data.ood, *cfg.data.task_sources}
    for i, b in enumerate(cfg.backbones):
        for role, spec in b.data.items():
            roles[f"backbones[{i}].data.{role}"] = spec
            if role not in known_roles:
                out.append(f"backbones[{i}].data.{role}: the study has no image set {role!r} to replace; use "
                           f"one of {', '.join(sorted(known_roles))}")
    for key, src in roles.items():
        if src is None:  # no training images: every block evaluates existing checkpoints
            continue
        kind, sep, arg = src.spec.partition(":")
        known_kind = (sep and arg and kind in SOURCES) or (not sep and src.spec in SOURCES)
        if not known_kind and not src.spec.startswith(("/", ".", "~")):
            out.append(f"{key}.spec: unknown image source {src.spec!r}; use one of "
                       f"{', '.join(known_sources())}")
        for field in ("split", "test_split"):
            value = getattr(src, field)
            if value is not None and value not in SPLITS:
                out.append(f"{key}.{field}: unknown split {value!r}; use one of {', '.join(SPLITS)}")
    return out


def _task_problems(cfg: StudyConfig) -> list[str]:
    from visae.errors import ConfigError
    from visae.tasks.registry import TASKS

    out = []
    for i, t in enumerate(cfg.tasks):
        if t.kind not in TASKS:
            out.append(f"tasks[{i}].kind: unknown task kind {t.kind!r}; known: {', '.join(TASKS.names())}")
        else:
            spec = TASKS[t.kind]
            out += _model_problems(spec.config_cls, {**spec.defaults, **t.config}, f"tasks[{i}].config")
        for field in ("source", "val_source"):
            role = getattr(t, field)
            if role is None:
                continue
            try:
                cfg.source(role)
            except ConfigError as e:
                out.append(f"tasks[{i}].{field}: {str(e).removeprefix('study: ')}")
    return out


def _hypothesis_problems(cfg: StudyConfig) -> list[str]:
    from visae.metrics.base import METRICS
    from visae.results.schema import parse_task_metric

    metrics = {*cfg.metrics, *(m for g in cfg.saes for m in g.metrics or [])}
    task_names = {t.name for t in cfg.tasks}
    out = []
    for i, h in enumerate(cfg.hypotheses):
        head = h.metric.split(".", 1)[0].split("@", 1)[0].split(":", 1)[0]
        if head not in METRICS:
            out.append(f"hypotheses[{i}].metric: {h.metric!r} is not a metric ({', '.join(METRICS.names())})")
        elif head not in metrics:
            out.append(f"hypotheses[{i}].metric: {h.metric!r} is not computed by this study (metrics: "
                       f"{', '.join(sorted(metrics))})")
        parsed = parse_task_metric(h.task)
        if parsed is None:
            out.append(f"hypotheses[{i}].task: {h.task!r} is not a task metric; write "
                       "task:<task>_<metric>:raw or :codes, e.g. task:retrieval_r1:raw")
        elif task_names and not any(h.task.startswith(f"task:{n}") for n in task_names):
            out.append(f"hypotheses[{i}].task: {h.task!r} names no task of this study (tasks: "
                       f"{', '.join(sorted(task_names))})")
        if not -1 <= h.threshold <= 1:
            out.append(f"hypotheses[{i}].threshold: {h.threshold} is not a Spearman ρ in [-1, 1]")
        if not 0 < h.alpha < 1:
            out.append(f"hypotheses[{i}].alpha: {h.alpha} is not a significance level in (0, 1)")
    return out


def validate_study(cfg: StudyConfig) -> list[str]:
    """Every problem of ``cfg`` found without computing, as ``<YAML path>: <what is wrong>`` lines."""
    from visae.study.plugins import import_plugins

    import_plugins(cfg.plugins)
    return [*_metric_problems(cfg), *_settings_problems(cfg), *_grid_problems(cfg), *_data_problems(cfg),
            *_task_problems(cfg), *_hypothesis_problems(cfg)]
