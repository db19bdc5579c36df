"""``visae eval``: run ViSAEBench metrics on one SAE over one evaluation cache and write a JSON per metric."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from visae.cli_common import ConfigOpt, SetOpt
from visae.errors import ConfigError
from visae.metrics.base import MetricConfig, MetricResult
from visae.sae.hub_cli import RevisionOpt, SubfolderOpt, sae_reference

# Fields every result has; the table shows the rest.
_COMMON_FIELDS = {"metric", "value", "higher_is_better", "note"}


def parse_metric_names(text: str) -> list[str]:
    """``"m1, m2,raw"`` → ``["m1", "m2", "raw"]`` (order kept, duplicates dropped); unknown names are
    errors (the Python API's check, :func:`visae.metrics.evaluate.metric_names`)."""
    from visae.metrics.evaluate import metric_names

    return metric_names(text, field="--metrics", example="--metrics m1,m2,raw")


def metric_configs(metrics: Sequence[str], config_path: Path | None = None,
                   overrides: Sequence[str] | None = None) -> dict[str, MetricConfig]:
    """Per-metric configs from a YAML file with one section per metric (``m1: {min_valid_images: 20}``)
    and ``--set m1.min_valid_images=20`` overrides; every section given is validated, run or not."""
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
    built = {name: build_config(metric_class(name).config_cls, dict(data.get(name, {})),
                                source=f"{source} [{name}]")
             for name in dict.fromkeys([*metrics, *data])}  # sections of metrics not run are validated too
    for text in overrides or []:  # a --set for a metric that does not run would be silently ignored
        head = text.split("=", 1)[0].split(".", 1)[0].strip()
        if head in METRICS and head not in metrics:
            raise ConfigError(f"--set {text}: {head} is not among the metrics run ({', '.join(metrics)}); "
                              f"add it to --metrics or drop the setting")
    return {name: built[name] for name in metrics}


def sae_options(overrides: Sequence[str] | None) -> tuple[dict[str, Any], list[str]]:
    """Split ``--set sae.<option>=value`` (options of the SAE's family, e.g. Matryoshka's ``sae.prefix``)
    from the metric overrides."""
    from visae.config import parse_override

    opts: dict[str, Any] = {}
    rest: list[str] = []
    for text in overrides or []:
        keys, value = parse_override(text)
        if keys[0] != "sae":
            rest.append(text)
        elif len(keys) != 2:
            raise ConfigError(f"--set {text!r}: SAE options read 'sae.<option>=value', e.g. sae.prefix=768")
        else:
            opts[keys[1]] = value
    return opts, rest


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


def images_cache(images: str, sae: str | None, backbone: str | None, layer: int | None, split: str,
                 max_images: int | None, cache_root: Path | None, device: str,
                 image_size: int | None = None) -> Path:
    """The evaluation cache of ``images`` (built once, content-addressed under ``cache_root``, reused after).

    Backbone, layer and image size default to those the SAE was trained on (its config.yaml and training
    cache).
    """
    import contextlib
    import sys

    from visae.cache.writer import build_cache
    from visae.io import visae_home
    from visae.metrics.evaluate import trained_on, training_geometry

    origin = trained_on(Path(sae)) if sae is not None and Path(sae).exists() else {}
    if image_size is None:
        image_size = training_geometry(sae).get("image_size")
    backbone = backbone or origin.get("backbone")
    layer = layer if layer is not None else origin.get("layer")
    if backbone is None or layer is None:
        raise ConfigError(f"--images {images}: give --backbone NAME and --layer L (the SAE "
                          f"{'does not say what it was trained on' if sae else 'is not given'}), e.g. "
                          "--backbone dinov2-b14 --layer 11")
    root = cache_root if cache_root is not None else visae_home() / "caches"
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the results table
        settings: dict[str, Any] = {"split": split, "max_images": max_images, "device": device}
        if image_size:
            settings["image_size"] = image_size
        folder = build_cache(backbone, images, int(layer), root, **settings)
    typer.echo(f"evaluation cache: {folder}", err=True)
    return folder


def _check_mode(names: list[str], sae: str | None, cache: Path | None, images: str | None,
                images_options: dict[str, Any], sae_options: dict[str, Any]) -> None:
    """One evaluation mode, and no option that does not apply to it (given options are not None)."""
    from visae.cli_common import refuse_inapplicable

    if (cache is None) == (images is None):
        raise ConfigError("give the evaluation images as --cache FOLDER (from 'visae cache') or as "
                          "--images SPEC with --backbone and --layer, one of the two")
    if cache is not None:
        refuse_inapplicable("with --cache (they choose how --images are cached)",
                            {flag: value is not None for flag, value in images_options.items()})
    if sae is None:
        refuse_inapplicable("without --sae", {flag: value is not None for flag, value in sae_options.items()})
    if sae is None and names != ["raw"]:
        raise ConfigError(f"--sae: metrics {', '.join(n for n in names if n != 'raw')} need an SAE; "
                          "without one only the raw-backbone diagnostic runs (--metrics raw)")


ImageSizeOpt = Annotated[int | None, typer.Option(
    "--image-size", min=1, help="With --images: the input resolution to cache them at (default: the size the "
                                "SAE was trained at; another size is allowed because you asked for it).")]
AllowOtherSizeOpt = Annotated[bool, typer.Option(
    "--allow-other-size", help="Evaluate although the cache's images have another size (patch grid) than the "
                               "SAE's training images (default: refuse).")]


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command to the ``visae`` app."""

    @app.command("eval")
    def eval_command(
        sae: Annotated[str | None,
                       typer.Option("--sae",
                                    help="SAE checkpoint folder, or hub repo REPO[:SUBFOLDER][@REVISION] "
                                         "(not needed for --metrics raw).")] = None,
        cache: Annotated[Path | None, typer.Option("--cache", help="Evaluation activation cache folder (or "
                                                                   "give --images).")] = None,
        metrics: Annotated[str, typer.Option("--metrics", "-m",
                                             help="Comma-separated metrics: m1,m2,raw,m3 … m7.")] = "m1,m2",
        out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for <metric>.json and "
                                                                     "per-feature tables.")] = None,
        group_size: Annotated[int,
                              typer.Option("--group-size", min=1,
                                           help="Images per encoding group (paper Table 2: 64); reduced "
                                                "automatically to bound memory.")] = 64,
        device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1, mps.")] = "auto",
        backbone: Annotated[str | None,
                            typer.Option("--backbone",
                                         help="Backbone name: for --images, the backbone to cache them with "
                                              "(default: the SAE's); else for evaluator pairing (default: "
                                              "the cache's).")] = None,
        subfolder: SubfolderOpt = None,
        revision: RevisionOpt = None,
        images: Annotated[str | None,
                          typer.Option("--images",
                                       help="Image source spec (folder:PATH, offline:digits …) to cache and "
                                            "evaluate on in one go, instead of --cache.")] = None,
        layer: Annotated[int | None, typer.Option("--layer", "-l", help="With --images: the block to tap "
                                                                        "(default: the SAE's).")] = None,
        split: Annotated[str | None,
                         typer.Option("--split", help="With --images: train, val, test or all (default: "
                                                      "val).")] = None,
        max_images: Annotated[int | None,
                              typer.Option("--max-images", help="With --images: a seeded stratified subset "
                                                                "of this size.")] = None,
        cache_root: Annotated[Path | None,
                              typer.Option("--cache-root",
                                           help="With --images: root folder of the evaluation caches "
                                                "(default: $VISAE_HOME/caches).")] = None,
        image_size: ImageSizeOpt = None,
        allow_other_size: AllowOtherSizeOpt = False,
        strict: Annotated[bool,
                          typer.Option("--strict", help="Refuse an SAE trained on another backbone or layer "
                                                        "than the cache's (default: warn).")] = False,
        force: Annotated[bool, typer.Option("--force", help="Replace results of another SAE or cache in "
                                                            "--out (default: refuse).")] = False,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Evaluate one SAE on one cache (or on --images, cached first) in a single encoding pass; print a
        table and write a JSON per metric (value, every summary number, the config and the inputs' hashes)."""
        from visae.metrics.evaluate import evaluate

        names = parse_metric_names(metrics)
        _check_mode(names, sae, cache, images,
                    {"--layer": layer, "--split": split, "--max-images": max_images,
                     "--cache-root": cache_root, "--image-size": image_size},
                    {"--subfolder": subfolder, "--revision": revision,
                     "--allow-other-size": allow_other_size or None, "--strict": strict or None})
        sae_opts, set_ = sae_options(set_)
        cfgs = metric_configs(names, config, set_)
        sae_arg = None if sae is None else sae_reference(sae, subfolder, revision)
        if cache is None:
            cache = images_cache(str(images), sae_arg, backbone, layer, split or "val", max_images,
                                 cache_root, device, image_size)
            backbone = None  # the cache names its backbone
            allow_other_size = allow_other_size or image_size is not None  # an explicit size is asked for
        results = evaluate(sae_arg, cache, metrics=names, out_dir=out, configs=cfgs, device=device,
                           group_size=group_size, backbone=backbone, strict=strict, force=force,
                           allow_other_size=allow_other_size, sae_options=sae_opts)
        typer.echo(format_results(results))
        if out is not None:
            typer.echo(f"wrote {len(results)} result file(s) to {out}")
