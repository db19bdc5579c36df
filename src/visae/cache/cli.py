"""``visae cache``: build (or resume, or find) an activation cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from visae.cli_common import ConfigOpt, SetOpt, resolve_config, run_guarded


def register(app: typer.Typer) -> None:
    """Add the ``cache`` command to the ``visae`` app."""

    @app.command("cache")
    def cache_cmd(
        backbone: Annotated[str | None,
                            typer.Option("--backbone", "-b", help="Backbone registry or timm name.")] = None,
        source: Annotated[str | None, typer.Option("--source", help="Image source spec, e.g. offline:digits, "
                                                   "folder:/data/imagenet, hf:name[:split], "
                                                   "fashion-mnist.")] = None,
        layer: Annotated[int | None, typer.Option("--layer", "-l", help="0-based block to tap.")] = None,
        out: Annotated[Path | None, typer.Option("--out", "-o", help="Root folder for caches.")] = None,
        split: Annotated[str | None, typer.Option("--split", help="train, val, test or all.")] = None,
        max_images: Annotated[int | None,
                              typer.Option("--max-images", help="Seeded stratified subset size.")] = None,
        batch_size: Annotated[int | None,
                              typer.Option("--batch-size", help="Images per forward pass.")] = None,
        device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:1, mps.")] = None,
        shard_images: Annotated[int | None, typer.Option("--shard-images", help="Images per shard.")] = None,
        on_bad_image: Annotated[str | None, typer.Option("--on-bad-image", help="skip or fail.")] = None,
        num_workers: Annotated[int | None,
                               typer.Option("--num-workers", help="Decoding worker processes.")] = None,
        tokens_per_image: Annotated[int | None, typer.Option(
            "--tokens-per-image",
            help="Training caches: keep this many seeded patch positions per image.")] = None,
        weights_path: Annotated[str | None, typer.Option(
            "--weights-path",
            help="Local weights file for the backbone (safetensors or a weights-only torch file) "
                                   "instead of its hub default.")] = None,
        image_size: Annotated[int | None, typer.Option(
            "--image-size", help="Input resolution in pixels (a multiple of the patch size; default: the "
                                 "backbone's own, e.g. 224).")] = None,
        verify: Annotated[bool | None, typer.Option(
            "--verify/--no-verify", help="On a rerun, also check every shard's sha256 and rebuild those that "
                                         "differ (reads the whole cache).")] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Cache the patch-token activations of one backbone layer over an image source (resumable).

        Prints the cache folder (<backbone>-L<layer>-<source>-<split>-<images>-<hash>) on stdout, so that
        CACHE=$(visae cache …) names it; a rerun repairs a damaged cache and does nothing to a sound one."""
        from visae.cache.config import CacheConfig
        from visae.cache.writer import build_cache

        def go() -> None:
            cfg = resolve_config(CacheConfig, config, set_, base={
                "backbone": backbone, "source": source, "layer": layer, "out": out, "split": split,
                "max_images": max_images, "batch_size": batch_size, "device": device,
                "shard_images": shard_images, "on_bad_image": on_bad_image, "num_workers": num_workers,
                "tokens_per_image": tokens_per_image, "weights_path": weights_path, "image_size": image_size,
                "verify": verify})
            rest = cfg.model_copy(update={}).to_dict()
            for k in ("backbone", "source", "layer", "out"):
                rest.pop(k)
            path = build_cache(cfg.backbone, cfg.source, cfg.layer, cfg.out, **rest)
            typer.echo(str(path))

        run_guarded(go)
