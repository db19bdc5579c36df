"""The import graph of ``src/visae`` flows one way: no cycles, and no stage imports a stage above it.

Stage order, bottom to top (a module may import its own stage and any stage below):

=====================  ==========================================================================
foundation             ``visae`` (version), errors, io, config, device, registry, results, uncertainty,
                       hub_testing
backbones → datasets   models and image sources
cache                  activation caches
sae                    SAE families, training, checkpoints, the hub
inventory              ``visae ls``: what caches and checkpoints lie under a folder
synth                  synthetic caches with a planted ground truth (``visae synth``)
metrics → tasks        M1–M7, downstream tasks (write result records through ``results``)
features               per-feature views (Fig. 5, browser) of trained SAEs
analysis               statistics on the results table
report                 HTML from a study folder's files (reads only; imports no study code)
study                  config, planning, the stages that run every package above, executors
cli                    ``visae.cli``, ``visae.cli_common``, ``__main__`` and every ``<stage>.cli`` or
                       ``<stage>.<name>_cli`` module
=====================  ==========================================================================

Every import counts, also those inside functions (a deferred import is still a dependency), except those
under ``if TYPE_CHECKING:`` (annotations only; never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

STAGE_ORDER: list[tuple[str, ...]] = [
    ("visae",),
    ("errors",),
    ("io",),
    ("config",),
    ("device",),
    ("registry",),
    ("results",),
    ("uncertainty",),
    ("hub_testing",),
    ("backbones",),
    ("datasets",),
    ("cache",),
    ("sae",),
    ("inventory",),
    ("synth",),
    ("metrics",),
    ("tasks",),
    ("features",),
    ("analysis",),
    ("report",),
    ("study",),
    ("cli", "cli_common", "__main__"),
]
RANK = {name: i for i, names in enumerate(STAGE_ORDER) for name in names}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    out = {}
    for path in sorted((SRC / "visae").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The visae modules ``name`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    type_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block)
                 for stmt in block.body for n in ast.walk(stmt)}  # type: ignore[attr-defined]
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "visae")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "visae":
                continue
            subs = {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known}
            found.update(subs or {mod})
            if len(subs) < len(node.names):
                found.add(mod)
    return {m for m in found if m in known and m != name}


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def graph() -> dict[str, set[str]]:
    """Module → the visae modules it imports."""
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def stage_of(module: str) -> str:
    """The stage a module belongs to (a stage's own ``cli`` module belongs to the cli stage)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "visae"
    if parts[-1] == "cli" or parts[-1].endswith("_cli") or parts[1] in ("cli", "cli_common", "__main__"):
        return "cli"
    return parts[1]


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_stage() -> None:
    unknown = sorted({stage_of(m) for m in modules()} - set(RANK))
    assert not unknown, f"add these to STAGE_ORDER in tests/test_architecture.py: {unknown}"


def test_no_import_cycles() -> None:
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" ↔ ".join(c) for c in found)


def test_no_upward_imports() -> None:
    bad = []
    for module, deps in graph().items():
        for dep in sorted(deps):
            if RANK.get(stage_of(dep), -1) > RANK.get(stage_of(module), -1):
                bad.append(f"{module} ({stage_of(module)}) imports {dep} ({stage_of(dep)})")
    assert not bad, "imports against the stage order:\n" + "\n".join(bad)


def test_the_checker_sees_cycles_and_back_edges() -> None:
    g = {"visae.a": {"visae.b"}, "visae.b": {"visae.c"}, "visae.c": {"visae.a"}, "visae.d": {"visae.a"}}
    assert cycles(g) == [["visae.a", "visae.b", "visae.c"]]
    assert stage_of("visae.report.write") == "report" and stage_of("visae.study.cli") == "cli"
    assert RANK["study"] > RANK["report"] > RANK["analysis"] > RANK["results"]


MAX_FUNCTION_LINES = 80


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``file:line name (N lines)`` for each function or method of ``path`` longer than ``limit`` lines
    (from ``def`` to its last line; decorators not counted)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    where = path.relative_to(SRC) if path.is_relative_to(SRC) else path
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            n_lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if n_lines > limit:
                out.append(f"{where}:{node.lineno} {node.name} ({n_lines} lines)")
    return out


def test_no_function_over_80_lines() -> None:
    bad = [row for path in modules().values() for row in long_functions(path)]
    assert not bad, f"functions over {MAX_FUNCTION_LINES} lines (split them into helpers):\n" + "\n".join(bad)


def test_the_length_check_sees_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    (tmp_path / "m.py").write_text(f"@decorator\ndef long():\n{body}\n\n\ndef short():\n    pass\n")
    rows = long_functions(tmp_path / "m.py", limit=80)
    assert len(rows) == 1 and rows[0].endswith("long (81 lines)")
    assert long_functions(tmp_path / "m.py", limit=81) == []


TESTS = Path(__file__).resolve().parent


def skipped_own_imports(path: Path) -> list[str]:
    """``file:line`` of each ``pytest.importorskip("visae…")``: an import regression of visae's own code
    would turn that test into a skip instead of a failure."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{path.name}:{node.lineno}" for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "importorskip" and node.args and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).split(".")[0] == "visae"]


def test_tests_import_visae_directly() -> None:
    bad = [row for path in sorted(TESTS.rglob("*.py")) for row in skipped_own_imports(path)]
    assert not bad, ("import visae's modules directly (importorskip is for optional packages): "
                     + ", ".join(bad))


def test_the_importorskip_check_sees_an_own_module(tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text('import pytest\nx = pytest.importorskip("visae.sae.checkpoint")\n'
                                   'y = pytest.importorskip("ray")\n')
    assert skipped_own_imports(tmp_path / "t.py") == ["t.py:2"]
