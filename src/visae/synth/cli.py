"""``visae synth``: write a synthetic activation cache with a planted ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from visae.cli_common import ConfigOpt, SetOpt, run_guarded


def register(app: typer.Typer) -> None:
    """Add the ``synth`` command to the ``visae`` app."""

    @app.command("synth")
    def synth_cmd(
        preset: Annotated[str | None, typer.Option(
            "--preset", "-p",
            help="What to plant: spatial, null, hierarchical, easy, superposed, paper.")] = None,
        out: Annotated[Path | None, typer.Option("--out", "-o", help="Root folder for caches.")] = None,
        images: Annotated[int | None, typer.Option("--images", "-n", help="Images (rows) to draw.")] = None,
        grid: Annotated[int | None, typer.Option("--grid", help="Patch grid side H = W (P = H²).")] = None,
        d: Annotated[int | None, typer.Option("--d", help="Activation width D.")] = None,
        features: Annotated[int | None, typer.Option("--features", help="Planted features F*.")] = None,
        seed: Annotated[int | None, typer.Option("--seed", help="Seed of the model and the images.")] = None,
        split: Annotated[str | None, typer.Option(
            "--split", help="train, val or test: other images of the same model.")] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Draw patch activations from a planted model and cache them (an ordinary, resumable cache).

        Prints the cache folder on stdout, like 'visae cache'; the folder also holds ground_truth.json
        (what was planted), read by 'visae eval --metrics recovery'. Settings: the preset's, then the
        YAML file, then these options, then --set key=value (any field of visae.synth.SynthConfig)."""
        from visae.config import build_config, read_yaml
        from visae.errors import ConfigError
        from visae.synth.config import SynthConfig
        from visae.synth.generate import generate
        from visae.synth.presets import PRESETS, preset_settings

        def go() -> None:
            data = read_yaml(config) if config is not None else {}
            name = preset or data.get("preset")
            if not name:
                raise ConfigError(f"synth: name a preset with --preset ({', '.join(PRESETS)})")
            options = {"n_images": images, "grid": grid, "d": d, "n_features": features, "seed": seed,
                       "split": split, "out": out}
            given = {k: v for k, v in options.items() if v is not None}
            merged = {**preset_settings(str(name)), **data, **given}
            merged["preset"] = str(name)
            cfg = build_config(SynthConfig, merged, set_, source=str(config) if config else "options")
            typer.echo(str(generate(cfg)))

        run_guarded(go)
