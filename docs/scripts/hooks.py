"""mkdocs hook: fills the generated parts of the pages at build time.

``<!-- visae:cli -->`` becomes the CLI reference rendered from the Typer app (``cli_reference.py``) and
``<!-- visae:performance -->`` the per-release tables of ``benchmarks/results/*.json``
(``perf_tables.py``), so neither can drift from what it describes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for p in (HERE, ROOT / "src"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


API_SKIP = {"__init__", "__main__"}


def api_pages(src: Path = ROOT / "src" / "visae") -> dict[str, str]:
    """One Markdown page per package of ``visae`` (and one for the foundation modules): a mkdocstrings
    block for the package and each of its modules, found on disk so that a new module needs no edit."""
    pages: dict[str, str] = {}
    foundation = sorted(p.stem for p in src.glob("*.py") if p.stem not in API_SKIP)
    body = ["# Foundation modules\n", "The modules every package may import.\n"]
    body += [f"## `visae.{m}`\n\n::: visae.{m}\n    options:\n      show_root_heading: false\n"
             for m in foundation]
    pages["api/foundation.md"] = "\n".join(body)
    for pkg in sorted(p for p in src.iterdir() if (p / "__init__.py").is_file()):
        name = f"visae.{pkg.name}"
        body = [f"# `{name}`\n",
                f"::: {name}\n    options:\n      show_root_heading: false\n      members: false\n"]
        for mod in sorted(pkg.rglob("*.py")):
            if mod.stem in API_SKIP:
                continue
            dotted = ".".join([name, *mod.relative_to(pkg).with_suffix("").parts])
            body.append(f"## `{dotted}`\n\n::: {dotted}\n    options:\n      show_root_heading: false\n")
        pages[f"api/{pkg.name}.md"] = "\n".join(body)
    return pages


def on_files(files: Any, config: Any) -> Any:
    """Add the generated API pages to the site."""
    from mkdocs.structure.files import File

    for uri, content in api_pages().items():
        files.append(File.generated(config, uri, content=content))
    return files


def _api_index() -> str:
    rows = ["| page | what it holds |", "|---|---|"]
    for uri, content in api_pages().items():
        first = content.splitlines()[0].lstrip("# ").strip()
        rows.append(f"| [{first}]({uri.removeprefix('api/')}) | {content.count(':::')} modules |")
    return "\n".join(rows)


def _load(name: str) -> Any:
    """Import a sibling script of this hook by its path (mkdocs does not put this folder on sys.path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"visae_docs_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the generated-content markers of a page."""
    if "<!-- visae:cli -->" in markdown:
        markdown = markdown.replace("<!-- visae:cli -->", _load("cli_reference").render())
    if "<!-- visae:performance -->" in markdown:
        markdown = markdown.replace("<!-- visae:performance -->", _load("perf_tables").render())
    if "<!-- visae:api-index -->" in markdown:
        markdown = markdown.replace("<!-- visae:api-index -->", _api_index())
    return markdown
