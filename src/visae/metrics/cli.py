"""``visae eval``: run ViSAEBench metrics on one SAE over one evaluation cache and write a JSON per metric."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from visae.cli_common import ConfigOpt, SetOpt, run_guarded
from visae.errors import ConfigError
from visae.metrics.base import MetricConfig, MetricResult
from visae.sae.hub_cli import RevisionOpt, SubfolderOpt, sae_reference

# Fields every result has; the table shows the rest.
_COMMON_FIELDS = {"metric", "value", "higher_is_better", "note"}


def parse_metric_names(text: str) -> list[str]:
    """``"m1, m2,raw"`` → ``["m1", "m2", "raw"]`` (order kept, duplicates dropped); unknown names are errors."""
    from visae.metrics.base import METRICS

    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise ConfigError("--metrics: no metric named; give e.g. --metrics m1,m2,raw")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"--metrics: unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS.names())}")
    return names


def metric_configs(metrics: Sequence[str], config_path: Path | None = None,
                   overrides: Sequence[str] | None = None) -> dict[str, MetricConfig]:
    """Per-metric configs from a YAML file with one section per metric (``m1: {min_valid_images: 20}``)
    and ``--set m1.min_valid_images=20`` overrides; sections of metrics not run are checked by name only."""
    from visae.config import apply_overrides, build_config, read_yaml
    from visae.metrics.base import METRICS
    from visae.metrics.evaluate import metric_class

    source = str(config_path) if config_path is not None else "--set"
    data = apply_overrides(read_yaml(config_path) if config_path is not None else {}, list(overrides or []))
    for key, section in data.items():
        if key not in METRICS:
            raise ConfigError(f"{source}: unknown section {key!r}; sections are metric names "
                              f"({', '.join(METRICS.names())}), e.g. 'm1.min_valid_images=20'")
        if not isinstance(section, Mapping):
            raise ConfigError(f"{source}: section {key!r} must be a mapping of settings, got {section!r}")
    return {name: build_config(metric_class(name).config_cls, dict(data.get(name, {})), source=f"{source} [{name}]")
            for name in metrics}


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_results(results: Mapping[str, MetricResult]) -> str:
    """A short table: one line per metric with its headline value, direction and scalar summary numbers."""
    lines = [f"{'metric':<8} {'value':>10}  details"]
    for name, res in results.items():
        value = "—" if res.value is None else f"{res.value:.4f}"
        arrow = "↑" if res.higher_is_better else "↓"
        details = ", ".join(f"{k}={_fmt(v)}" for k, v in res.model_dump().items()
                            if k not in _COMMON_FIELDS and isinstance(v, (int, float)) and v is not None)
        note = f"  ({res.note})" if res.note else ""
        lines.append(f"{name:<8} {value:>10} {arrow} {details}{note}")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command to the ``visae`` app."""

    @app.command("eval")
    def eval_command(
        sae: Annotated[str, typer.Option("--sae", help="SAE checkpoint folder, or hub repo REPO[:SUBFOLDER][@REVISION].")],
        cache: Annotated[Path, typer.Option("--cache", help="Evaluation activation cache folder.")],
        metrics: Annotated[str, typer.Option("--metrics", "-m", help="Comma-separated metrics: m1,m2,raw,m3 … m7.")] = "m1,m2",
        out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for <metric>.json and per-feature tables.")] = None,
        group_size: Annotated[int, typer.Option("--group-size", min=1, help="Images per encoding group (paper Table 2: 64); reduced automatically to bound memory.")] = 64,
        device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1, mps.")] = "auto",
        backbone: Annotated[str | None, typer.Option("--backbone", help="Backbone name for evaluator pairing (default: the cache's).")] = None,
        subfolder: SubfolderOpt = None,
        revision: RevisionOpt = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Evaluate one SAE on one cache in a single encoding pass; print a table and write a JSON per metric
        (value, every summary number, the config and the inputs' hashes)."""
        from visae.metrics.evaluate import evaluate

        names = run_guarded(parse_metric_names, metrics)
        cfgs = run_guarded(metric_configs, names, config, set_)
        sae_arg = run_guarded(sae_reference, sae, subfolder, revision)
        results = run_guarded(evaluate, sae_arg, cache, metrics=names, out_dir=out, configs=cfgs, device=device,
                              group_size=group_size, backbone=backbone)
        typer.echo(format_results(results))
        if out is not None:
            typer.echo(f"wrote {len(results)} result file(s) to {out}")
