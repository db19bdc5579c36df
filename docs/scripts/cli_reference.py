"""Render the CLI reference (every command of the Typer app, its usage, help and options) as Markdown.

Run as a script it prints the page body; the docs hook (``hooks.py``) calls :func:`render` at build time,
so the reference is always the installed ``visae`` app's own help.
"""

from __future__ import annotations

from typing import Any

import typer

try:  # typer ≥ 0.20 carries its own copy of click
    from typer._click import Context
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import Context


def _type_name(p: Any, ctx: Any) -> str:
    if getattr(p, "is_flag", False):
        return "flag"
    try:  # typer's own parameters describe their type for a context; click's carry a ParamType
        name = str(p.display_type(ctx)) if hasattr(p, "display_type") else p.type.name
    except Exception:  # a type that cannot describe itself is shown without one
        name = ""
    name = name.strip("<>")
    return f"{name}, repeatable" if getattr(p, "multiple", False) else name


def _text(s: str) -> str:
    """Help text as Markdown: ``<placeholders>`` kept visible (not read as HTML tags) and ``[optional]``
    parts kept as text (``A[:B][@C]`` would otherwise read as a reference link)."""
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("[", "\\[").replace("]", "\\]"))


def _param_row(p: Any, ctx: Any) -> str:
    names = ", ".join(f"`{n}`" for n in [*p.opts, *p.secondary_opts])
    kind = "argument" if p.param_type_name == "argument" else _type_name(p, ctx)
    default = p.default
    shown = "" if default is None or callable(default) or default in ((), []) else f"`{default}`"
    if p.required:
        shown = "required"
    text = _text(getattr(p, "help", None) or "").replace("|", "\\|").replace("\n", " ")
    return f"| {names} | {kind} | {shown} | {text} |"


def _command(cmd: Any, path: list[str], out: list[str]) -> None:
    ctx = Context(cmd, info_name=" ".join(path))
    if path[1:]:
        out.append(f"{'#' * min(len(path), 4)} `{' '.join(path)}`\n")
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    out.append(f"```text\n{' '.join(path)} {usage}\n```\n")
    if cmd.help:
        out.append(_text(cmd.help.strip().replace("\b\n", "")) + "\n")
    params = [p for p in cmd.get_params(ctx) if p.name != "help" and not getattr(p, "hidden", False)]
    if params:
        out.append("| option | type | default | what it does |\n|---|---|---|---|")
        out.extend(_param_row(p, ctx) for p in params)
        out.append("")
    if hasattr(cmd, "list_commands"):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                _command(sub, [*path, name], out)


def render() -> str:
    """The Markdown of every command of ``visae.cli.app``, depth first in the app's own order."""
    from visae.cli import app

    out: list[str] = []
    _command(typer.main.get_command(app), ["visae"], out)
    return "\n".join(out)


if __name__ == "__main__":
    print(render())
