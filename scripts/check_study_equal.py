"""Behaviour check for refactors of the study pipeline: run the tiny study and compare it with a baseline.

    python scripts/check_study_equal.py run OUT          # run the tiny study in OUT/study, snapshot it to
                                                         # OUT/snapshot
    python scripts/check_study_equal.py compare BASE NEW # compare two snapshots (exit 1 on any difference)

The tiny study is ``visae.study.testing.TINY_STUDY``, the one ``tests/study/test_end_to_end.py`` runs (tiny
random ViTs, offline digits, every metric but M7, a retrieval task). A snapshot holds ``results.parquet``,
``details.parquet`` and every result JSON and per-feature table, named by what they describe (SAE id and
metric, backbone and layer, task) rather than by job folder, so that a job whose hash changed is still
compared with its old self. Timings and versions are left out of the comparison, paths are compared relative
to the study folder, and numbers must match to rtol 1e-6.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

IGNORED_KEYS = {"seconds", "visae_version", "cache_path", "finished"}
META = "meta.json"
"""The snapshot's own record: the study folder (paths inside results are compared relative to it), job ids."""
RTOL = 1e-6


def _done_params(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "done.json").read_text(encoding="utf-8")).get("params", {}))


def snapshot(study: Path, out: Path) -> None:
    """Copy the study's results tables and result files into ``out`` under descriptive names."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("results.parquet", "details.parquet"):
        shutil.copy(study / "results" / name, out / name)
    for folder in sorted((study / "evals").iterdir()):
        dest = out / "evals" / _done_params(folder)["sae_id"]
        dest.mkdir(parents=True, exist_ok=True)
        for f in folder.iterdir():
            if f.suffix in (".json", ".parquet") and f.name != "done.json":
                shutil.copy(f, dest / f.name)
    for kind in ("raw", "tasks"):
        for folder in sorted((study / kind).iterdir()):
            p = _done_params(folder)
            tag = "-".join(str(x) for x in (p.get("task", {}).get("name"), p["backbone"], p["layer"])
                           if x is not None)
            dest = out / kind / tag
            dest.mkdir(parents=True, exist_ok=True)
            for f in folder.iterdir():
                if f.suffix in (".json", ".parquet") and f.name != "done.json":
                    shutil.copy(f, dest / f.name)


def run(out: Path) -> None:
    """Run the tiny study in ``out/study`` and snapshot it to ``out/snapshot``."""
    from visae.study.config import load_study_config
    from visae.study.run import run_study
    from visae.study.testing import TINY_STUDY

    out.mkdir(parents=True, exist_ok=True)
    path = out / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY_STUDY, "out_dir": "study"}))
    cfg = load_study_config(path)
    plan, summary = run_study(cfg)
    if summary is None or not summary.ok:
        raise SystemExit(f"the tiny study failed:\n{summary.describe(plan) if summary else ''}")
    snapshot(Path(cfg.out_dir), out / "snapshot")
    meta = {"root": str(Path(cfg.out_dir)), "job_ids": {j.label: j.id for j in plan.jobs}}
    (out / "snapshot" / META).write_text(json.dumps(meta, indent=1))


def _relative(obj: Any, root: str) -> Any:
    """``obj`` with the study folder in every string replaced by ``<study>``."""
    if isinstance(obj, dict):
        return {k: _relative(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative(v, root) for v in obj]
    return obj.replace(root, "<study>") if isinstance(obj, str) else obj


def _same(a: Any, b: Any, where: str, diffs: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in IGNORED_KEYS:
                continue
            if k not in a or k not in b:
                diffs.append(f"{where}.{k}: only in {'new' if k in b else 'baseline'}")
            else:
                _same(a[k], b[k], f"{where}.{k}", diffs)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            diffs.append(f"{where}: {len(a)} vs {len(b)} items")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            _same(x, y, f"{where}[{i}]", diffs)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if not (math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))):
            diffs.append(f"{where}: {a!r} vs {b!r}")
    elif a != b:
        diffs.append(f"{where}: {a!r} vs {b!r}")


def _frame(path: Path) -> pd.DataFrame:
    df = pd.read_parquet(path)
    keys = [c for c in ("backbone", "layer", "sae_id", "metric", "feature") if c in df.columns]
    return df.sort_values(keys).reset_index(drop=True) if keys else df


def compare(base: Path, new: Path) -> list[str]:
    """Every difference between two snapshots (empty when equal)."""
    diffs: list[str] = []
    root_a = json.loads((base / META).read_text())["root"]
    root_b = json.loads((new / META).read_text())["root"]
    files_a = {p.relative_to(base) for p in base.rglob("*") if p.is_file() and p.name != META}
    files_b = {p.relative_to(new) for p in new.rglob("*") if p.is_file() and p.name != META}
    diffs += [f"{p}: only in baseline" for p in sorted(files_a - files_b)]
    diffs += [f"{p}: only in new" for p in sorted(files_b - files_a)]
    for rel in sorted(files_a & files_b):
        if rel.suffix == ".json":
            _same(_relative(json.loads((base / rel).read_text()), root_a),
                  _relative(json.loads((new / rel).read_text()), root_b), str(rel), diffs)
        elif rel.suffix == ".parquet":
            try:
                pd.testing.assert_frame_equal(_frame(base / rel), _frame(new / rel), check_exact=False,
                                              rtol=RTOL, atol=1e-9)
            except AssertionError as e:
                diffs.append(f"{rel}: {str(e).splitlines()[0]}")
    return diffs


def main(argv: list[str]) -> int:
    """Entry point (see the module docstring)."""
    if len(argv) == 2 and argv[0] == "run":
        run(Path(argv[1]).resolve())
        return 0
    if len(argv) == 3 and argv[0] == "compare":
        diffs = compare(Path(argv[1]), Path(argv[2]))
        n = sum(1 for p in Path(argv[1]).rglob("*") if p.suffix in (".json", ".parquet") and p.name != META)
        print("\n".join(diffs) if diffs
              else f"equal: {n} files (results, details, every result JSON and table)")
        return 1 if diffs else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
