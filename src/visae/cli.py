"""The ``visae`` command: one Typer app; each stage adds its sub-commands through ``register(app)``."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import typer
from typer.core import TyperGroup

from visae import __version__


class _GuardedGroup(TyperGroup):
    """The top-level group: every sub-command runs under :func:`visae.cli_common.cli_errors`, and a usage
    error (unknown option, value out of range) is one ``error: …`` line with exit code 2, not a panel."""

    def invoke(self, ctx: Any) -> Any:
        from visae.cli_common import cli_errors

        with cli_errors():
            return super().invoke(ctx)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Run the app; in standalone mode click's usage errors and aborts print as one ``error:`` line."""
        run: Any = super().main
        if not kwargs.pop("standalone_mode", True):
            return run(*args, standalone_mode=False, **kwargs)
        import sys

        from typer._click.exceptions import ClickException, NoArgsIsHelpError
        from typer.exceptions import Abort

        try:
            rv = run(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as e:
            typer.echo(e.format_message(), err=True)
            sys.exit(2)
        except ClickException as e:
            ctx = getattr(e, "ctx", None)
            where = ctx.command_path if ctx is not None else "visae"
            message = " ".join(e.format_message().split())
            typer.secho(f"error: {message} (see '{where} --help')", fg=typer.colors.RED, err=True)
            sys.exit(e.exit_code)
        except Abort as e:
            cause = e.__cause__
            what = f"unexpected end of input ({cause})" if isinstance(cause, EOFError) else "aborted"
            typer.secho(f"error: {what}", fg=typer.colors.RED, err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_GuardedGroup,
    name="visae",
    help="Train sparse autoencoders on ViT patch activations and evaluate them with ViSAEBench.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Stage modules that contribute commands, in pipeline order.
STAGE_CLIS = [
    "visae.cache.cli",       # cache
    "visae.synth.cli",       # synth
    "visae.sae.cli",         # train
    "visae.metrics.cli",     # eval
    "visae.analysis.cli",    # analyze
    "visae.study.cli",       # study run/status, demo
    "visae.report.cli",      # report
    "visae.datasets.cli",    # data fetch
    "visae.sae.hub_cli",     # ls, export
]

@app.callback()
def main() -> None:
    """visae: sparse autoencoders on ViT patch activations, evaluated with ViSAEBench."""
    from visae.device import fit_threads_to_budget

    fit_threads_to_budget()  # a container's CPU quota, not the host's core count


EXTRAS = {
    "offline": ["onnxruntime", "onnx", "transformers", "skimage", "mlxtend"],
    "hf": ["datasets"],
    "ray": ["ray"],
    "bench": ["overcomplete"],
    "interop": ["sae_lens", "saev", "dictionary_learning", "sparsify"],
}


@app.command()
def info() -> None:
    """Version, device, installed extras, and the registered backbones, sources, SAE families, metrics,
    tasks."""
    import torch

    from visae.device import pick_device

    typer.echo(f"visae {__version__}")
    typer.echo(f"torch {torch.__version__}; device: {pick_device('auto')}"
               + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
    for extra, modules in EXTRAS.items():
        have = [m for m in modules if importlib.util.find_spec(m) is not None]
        missing = ", ".join(sorted(set(modules) - set(have)))
        status = "installed" if len(have) == len(modules) else f"missing {missing}"
        typer.echo(f"extra [{extra}]: {status}")
    _echo_registries()


def _echo_registries() -> None:
    """One line per registry: the names ``visae`` knows (plugins add theirs to the same registries)."""
    from visae.backbones.registry import BACKBONE_WRAPPERS, known_backbones
    from visae.datasets.registry import known_sources
    from visae.metrics.base import METRICS
    from visae.sae.formats import CHECKPOINT_FORMATS
    from visae.sae.registry import SAE_FAMILIES
    from visae.tasks.registry import TASKS

    wrapped = "".join(f", {prefix}<name>" for prefix in BACKBONE_WRAPPERS.names())
    typer.echo("backbones: " + ", ".join(known_backbones()) + wrapped + " (or any timm ViT name)")
    typer.echo("image sources: " + ", ".join(known_sources()))
    typer.echo("SAE families: " + ", ".join(SAE_FAMILIES.names()))
    typer.echo("metrics: " + ", ".join(METRICS.names()))
    typer.echo("tasks: " + ", ".join(TASKS.names()))
    typer.echo("checkpoint formats: visae, " + ", ".join(CHECKPOINT_FORMATS.names()))


def _register_stages() -> None:
    for module in STAGE_CLIS:
        if importlib.util.find_spec(module) is None:
            continue
        importlib.import_module(module).register(app)


_register_stages()

if __name__ == "__main__":
    app()
