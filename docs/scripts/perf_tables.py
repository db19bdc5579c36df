"""Render one Markdown table per release from ``benchmarks/results/*.json`` (newest release first).

Each JSON file holds ``release``, ``date``, ``machine``, ``note`` and ``rows`` (``what``, ``script``,
``ours``, ``peer``, ``ratio``, ``goal`` and optionally the row's own ``date``). The docs hook calls
:func:`render`; run as a script it prints the tables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def _order(doc: dict[str, Any]) -> tuple[int, tuple[int, ...]]:
    rel = str(doc["release"])
    if rel.lower() == "unreleased":
        return (1, ())
    return (0, tuple(int(x) for x in rel.split(".") if x.isdigit()))


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|")


def render(results: Path = RESULTS) -> str:
    """The performance tables, one section per release file, newest first."""
    docs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(results.glob("*.json"))]
    if not docs:
        raise FileNotFoundError(f"no benchmark results in {results}")
    out: list[str] = []
    for doc in sorted(docs, key=_order, reverse=True):
        out.append(f"## {doc['release']} ({doc['date']})\n")
        out.append(f"Machine: {doc['machine']}. {doc.get('note', '')}\n")
        dated = any("date" in r for r in doc["rows"])
        head = ["what", "script", *(["date"] if dated else []), "ours", "peer or limit", "ratio", "goal"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for r in doc["rows"]:
            cells = [r["what"], f"`{r['script']}`", *([r.get("date", doc["date"])] if dated else []),
                     r["ours"], r["peer"], r["ratio"], r["goal"]]
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render())
