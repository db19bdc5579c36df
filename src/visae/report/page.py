"""The HTML page builder: sections, figures and tables (each drawn by a function that may raise
:class:`~visae.report.data.NotEnoughData`, shown as a note in its place), one self-contained page."""

from __future__ import annotations

import html
import math
import traceback
from collections.abc import Callable
from typing import Any

import pandas as pd

from visae.report.data import NotEnoughData
from visae.report.figures import to_png_b64

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1100px;margin:auto;padding:1em 2em 4em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
figure{margin:1em 0;background:#fff;padding:.6em;border:1px solid #e3e3e3}
figure img{max-width:100%}figcaption{font-size:.9em;color:#555;margin-top:.4em}
table{border-collapse:collapse;font-size:.85em;background:#fff;margin:.6em 0}
td,th{border:1px solid #ddd;padding:.25em .5em;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}
.note{background:#fff7e0;border-left:4px solid #e0a800;padding:.5em .8em;font-size:.9em}
.cell img{display:block}.small{font-size:.85em;color:#666}
nav a{margin-right:.8em}
"""



def esc(x: Any) -> str:
    """HTML-escaped text."""
    return html.escape(str(x))


def note(text: str) -> str:
    """The 'not enough data' note shown in place of a figure or table."""
    return f'<p class="note">not enough data: {esc(text)}</p>'


def table_html(df: pd.DataFrame, index: bool = False) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "—" if not math.isfinite(v) else f"{v:.3f}"
        return str(v)

    return df.to_html(index=index, escape=True, border=0, formatters={c: fmt for c in df.columns},
                      na_rep="—")


ERROR_CLASS = "note error"
"""CSS class of the note shown where a section's builder raised (not a missing input: a bug)."""


def error_note(what: str, e: Exception) -> str:
    """The note shown where a builder raised, with its traceback in an HTML comment."""
    return (f'<p class="{ERROR_CLASS}">could not {what}: {esc(type(e).__name__)}: {esc(e)}</p>'
            f"<!-- {esc(traceback.format_exc())} -->")


class Report:
    """Accumulates sections of the HTML page; a builder that raises leaves an error note (and its message
    in :attr:`errors`) instead of taking the whole report down."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.toc: list[tuple[str, str]] = []
        self.n_figures = 0
        self.errors: list[str] = []

    def section(self, anchor: str, title: str) -> None:
        """Start a titled section."""
        self.toc.append((anchor, title))
        self.parts.append(f'<h2 id="{anchor}">{esc(title)}</h2>')

    def _failed(self, title: str, what: str, e: Exception) -> None:
        self.errors.append(f"{title}: {type(e).__name__}: {e}")
        self.parts.append(f"<h3>{esc(title)}</h3>{error_note(what, e)}")

    def figure(self, title: str, caption: str, make: Callable[[], Any]) -> None:
        """A matplotlib figure (from ``make``) or the note saying why it is missing."""
        try:
            b64 = to_png_b64(make())
        except NotEnoughData as e:
            self.parts.append(f"<h3>{esc(title)}</h3>{note(str(e))}")
            return
        except Exception as e:  # a figure that breaks must not take the whole report down
            self._failed(title, "draw", e)
            return
        self.n_figures += 1
        self.parts.append(f'<figure><img class="fig" alt="{esc(title)}" src="data:image/png;base64,{b64}">'
                          f"<figcaption><b>{esc(title)}.</b> {esc(caption)}</figcaption></figure>")

    def table(self, title: str, caption: str, make: Callable[[], pd.DataFrame]) -> None:
        """A table (from ``make``) or the note saying why it is missing."""
        try:
            df = make()
            if df is None or df.empty:
                raise NotEnoughData("no rows")
        except NotEnoughData as e:
            self.parts.append(f"<h3>{esc(title)}</h3>{note(str(e))}")
            return
        except Exception as e:
            self._failed(title, "compute", e)
            return
        self.parts.append(f"<h3>{esc(title)}</h3><p class='small'>{esc(caption)}</p>{table_html(df)}")

    def html(self, title: str, caption: str, make: Callable[[], str]) -> None:
        """A block of HTML (from ``make``) under a title, or the note saying why it is missing."""
        self.parts.append(f"<h3>{esc(title)}</h3><p class='small'>{esc(caption)}</p>")
        try:
            self.parts.append(make())
        except NotEnoughData as e:
            self.parts.append(note(str(e)))
            return
        except Exception as e:
            self.errors.append(f"{title}: {type(e).__name__}: {e}")
            self.parts.append(error_note("draw", e))
            return
        self.n_figures += 1

    def raw(self, text: str) -> None:
        """Append literal HTML."""
        self.parts.append(text)

    def render(self, title: str, subtitle: str) -> str:
        """The whole page."""
        nav = " ".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in self.toc)
        return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
                f"<style>{CSS}</style></head><body><main><h1>{esc(title)}</h1><p "
                f"class='small'>{esc(subtitle)}</p><nav>{nav}</nav>{''.join(self.parts)}</main></body></html>")
