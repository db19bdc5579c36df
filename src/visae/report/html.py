"""The study report: ``index.html`` (figures, tables, hypotheses, practitioner guide) and ``features.html``
(feature browser). Both are self-contained: images are base64 PNG, CSS and JS are inline, no network."""

from __future__ import annotations

import html
import json
import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from visae.io import atomic_write_text
from visae.report.figures import (
    HEADLINE,
    METRIC_NAMES,
    NotEnoughData,
    ReportData,
    fig_correlation_heatmap,
    fig_fvu_preservation,
    fig_layer_ablation,
    fig_moran_distributions,
    fig_probing_curves,
    fig_profile,
    fig_task_panels,
    fig_variance,
    to_png_b64,
)

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


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _note(text: str) -> str:
    return f'<p class="note">not enough data: {_esc(text)}</p>'


def _table_html(df: pd.DataFrame, index: bool = False) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "—" if not math.isfinite(v) else f"{v:.3f}"
        return str(v)

    return df.to_html(index=index, escape=True, border=0, formatters={c: fmt for c in df.columns},
                      na_rep="—")


class Report:
    """Accumulates sections of the HTML page."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.toc: list[tuple[str, str]] = []
        self.n_figures = 0

    def section(self, anchor: str, title: str) -> None:
        """Start a titled section."""
        self.toc.append((anchor, title))
        self.parts.append(f'<h2 id="{anchor}">{_esc(title)}</h2>')

    def figure(self, title: str, caption: str, make: Callable[[], Any]) -> None:
        """A matplotlib figure (from ``make``) or the note saying why it is missing."""
        try:
            b64 = to_png_b64(make())
        except NotEnoughData as e:
            self.parts.append(f"<h3>{_esc(title)}</h3>{_note(str(e))}")
            return
        except Exception as e:  # a figure that breaks must not take the whole report down
            self.parts.append(f"<h3>{_esc(title)}</h3>{_note(f'could not draw: {type(e).__name__}: {e}')}"
                              f"<!-- {_esc(traceback.format_exc())} -->")
            return
        self.n_figures += 1
        self.parts.append(f'<figure><img class="fig" alt="{_esc(title)}" src="data:image/png;base64,{b64}">'
                          f"<figcaption><b>{_esc(title)}.</b> {_esc(caption)}</figcaption></figure>")

    def table(self, title: str, caption: str, make: Callable[[], pd.DataFrame]) -> None:
        """A table (from ``make``) or the note saying why it is missing."""
        try:
            df = make()
            if df is None or df.empty:
                raise NotEnoughData("no rows")
        except NotEnoughData as e:
            self.parts.append(f"<h3>{_esc(title)}</h3>{_note(str(e))}")
            return
        except Exception as e:
            self.parts.append(f"<h3>{_esc(title)}</h3>{_note(f'could not compute: {type(e).__name__}: {e}')}")
            return
        self.parts.append(f"<h3>{_esc(title)}</h3><p class='small'>{_esc(caption)}</p>{_table_html(df)}")

    def raw(self, text: str) -> None:
        """Append literal HTML."""
        self.parts.append(text)

    def render(self, title: str, subtitle: str) -> str:
        """The whole page."""
        nav = " ".join(f'<a href="#{a}">{_esc(t)}</a>' for a, t in self.toc)
        return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
                f"<style>{CSS}</style></head><body><main><h1>{_esc(title)}</h1><p class='small'>{_esc(subtitle)}</p>"
                f"<nav>{nav}</nav>{''.join(self.parts)}</main></body></html>")


# --- tables -----------------------------------------------------------------------------------------------

def _analysis_table(d: ReportData, name: str, why: str) -> pd.DataFrame:
    t = d.analysis.get(name)
    if not isinstance(t, pd.DataFrame) or t.empty:
        raise NotEnoughData(why)
    return t


def table_variance(d: ReportData) -> pd.DataFrame:
    """Table 3."""
    t = _analysis_table(d, "variance_decomposition", "needs ≥ 2 backbones × ≥ 2 configurations")
    t = t[t["metric"].isin([*HEADLINE, "raw"])]
    return t[["metric", "n_obs", "eta2_backbone", "eta2_config", "eta2_resid", "p_backbone", "p_config", "note"]]


def table_raw(d: ReportData) -> pd.DataFrame:
    """Table 4: raw-backbone Moran's I, null, z and a verdict per backbone."""
    res = d.results[(d.results["metric"] == "raw")]
    if d.layer is not None:
        res = res[res["layer"] == d.layer]
    if res.empty:
        raise NotEnoughData("no raw-backbone diagnostic rows (raw_diagnostic: true in the study)")
    det = d.details
    rows = []
    for b in d.backbones(res):
        sel = (det["backbone"] == b) & (det["layer"] == d.layer) if d.layer is not None else det["backbone"] == b

        def detail(name: str, sel: Any = sel) -> float:
            v = det.loc[sel & (det["metric"] == name), "value"]
            return float(v.iloc[0]) if len(v) else math.nan

        mean_i = float(res.loc[res["backbone"] == b, "value"].mean())
        null, z = detail("raw.null_expectation"), detail("raw.z")
        near = (abs(z) < 2) if math.isfinite(z) else False
        tiny = math.isfinite(null) and abs(mean_i - null) < 0.01
        verdict = "null-indistinguishable" if near else ("near-null effect size" if tiny else "strongly non-random")
        rows.append({"backbone": d.label(b), "mean raw I": mean_i, "null E[I]": null, "raw z": z,
                     "conclusion": verdict})
    return pd.DataFrame(rows)


def table_m6(d: ReportData) -> pd.DataFrame:
    """Table 6: per backbone and OOD dataset, probe accuracies and preservation (mean ± std over configs)."""
    det = d.details
    sub = det[det["metric"].str.startswith("m6.datasets.")]
    if d.family is not None:
        sub = sub[(sub["family"] == d.family) & (sub["layer"] == d.layer)]
    if sub.empty:
        raise NotEnoughData("no M6 per-dataset numbers (add OOD sets under data.ood and m6 to metrics)")
    parts = sub["metric"].str.slice(len("m6.datasets.")).str.rsplit(".", n=1, expand=True)
    sub = sub.assign(dataset=parts[0], field=parts[1])
    fields = [f for f in ("acc_raw", "acc_recon", "preservation", "acc_codes", "sparse_auc")
              if f in set(sub["field"])] or sorted(set(sub["field"]))
    rows = []
    for (b, ds), g in sub.groupby(["backbone", "dataset"], sort=False):
        row: dict[str, Any] = {"backbone": d.label(str(b)), "dataset": ds}
        for f in fields:
            v = g.loc[g["field"] == f, "value"].astype(float)
            v = v[np.isfinite(v)]
            if f == "acc_raw":
                row["raw"] = f"{v.mean():.3f}" if len(v) else "—"
            else:
                row[f.replace("acc_", "")] = (f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else "")
                                              if len(v) else "—")
        rows.append(row)
    return pd.DataFrame(rows)


def table_m7(d: ReportData) -> pd.DataFrame:
    """Table 7 (backbones by display name)."""
    t = _analysis_table(d, "m7_sensitivity", "no M7 α × β grid rows (m7:alpha=…:beta=…)")
    t = t.rename(columns={c: d.label(c) for c in t.columns if c in d.labels})
    if "lowest" in t:
        t["lowest"] = [", ".join(d.label(x.strip()) for x in str(v).split(",") if x.strip()) for v in t["lowest"]]
    return t


def table_lift(d: ReportData) -> pd.DataFrame:
    """Table 8."""
    return _analysis_table(d, "codes_lift_correlation", "needs tasks run on raw features and on SAE codes")


def table_consistency(d: ReportData) -> pd.DataFrame:
    """Table 9."""
    t = _analysis_table(d, "rank_consistency", "needs two SAE families on the same backbones (e.g. a jumprelu block)")
    return t[t["metric"].isin(HEADLINE)] if t["metric"].isin(HEADLINE).any() else t


def table_hypotheses(d: ReportData) -> pd.DataFrame:
    """Hypothesis verdicts."""
    t = _analysis_table(d, "hypotheses", "no hypotheses evaluated")
    return t[["id", "metric", "task", "threshold", "n", "rho", "p", "verdict", "note"]]


def practitioner_guide(d: ReportData) -> pd.DataFrame:
    """App. P from the results: per task, the best backbone and the supporting metric with the highest |ρ|."""
    from visae.analysis.schema import parse_task_metric

    corr = d.analysis.get("correlations")
    main = d.main
    tasks = sorted({tm.task for m in main["metric"].unique() if (tm := parse_task_metric(m)) is not None})
    if not tasks:
        raise NotEnoughData("no downstream task results")
    rows = []
    for task in tasks:
        pref = f"task:{task}:raw" if f"task:{task}:raw" in set(main["metric"]) else f"task:{task}:codes"
        means = main[main["metric"] == pref].groupby("backbone")["value"].mean().dropna()
        best = str(means.idxmax()) if len(means) else "—"
        support, rho, p = "—", math.nan, math.nan
        if isinstance(corr, pd.DataFrame) and not corr.empty:
            sub = corr[(corr["task"] == pref) & corr["metric"].isin(HEADLINE)].copy()
            sub = sub[np.isfinite(sub["rho"].astype(float))]
            if len(sub):
                top = sub.loc[sub["rho"].astype(float).abs().idxmax()]
                support = METRIC_NAMES.get(str(top["metric"]), str(top["metric"]))
                rho, p = float(top["rho"]), float(top["p"])
        rows.append({"task": task, "recommended backbone": d.label(best) if best != "—" else best,
                     "its score": float(means.max()) if len(means) else math.nan,
                     "supporting metric": support, "ρ": rho, "p": p, "n backbones": len(means)})
    return pd.DataFrame(rows)


# --- feature views ----------------------------------------------------------------------------------------

def _pick_sae(d: ReportData, backbone: str, target: tuple[float, float] = (16, 192)) -> dict[str, Any] | None:
    cands = [s for s in d.saes if s["backbone"] == backbone and s.get("family") == d.family
             and s.get("layer") == d.layer and (d.root / s["eval"] / "m1_features.parquet").exists()]
    if not cands:
        return None
    return min(cands, key=lambda s: (abs(math.log(s["expansion"] / target[0])) + abs(math.log(s["k"] / target[1]))))


_SCANS: dict[tuple[str, str, int], Any] = {}


def _scan(d: ReportData, rec: dict[str, Any], sae: Any, cache: Any, device: Any, n_top: int) -> Any:
    """scan_features once per (study, SAE, n_top) within a report run."""
    from visae.report.features import scan_features

    key = (str(d.root), rec["sae_id"], n_top)
    if key not in _SCANS:
        _SCANS[key] = scan_features(sae, cache, device, n_top=n_top)
    return _SCANS[key]


def _open_sae_and_cache(d: ReportData, rec: dict[str, Any]) -> tuple[Any, Any]:
    from visae.sae.checkpoint import load_sae
    from visae.study.jobs import open_job_cache

    done = json.loads((d.root / rec["eval"] / "done.json").read_text(encoding="utf-8"))
    cache_out = done["params"]["cache"]
    return load_sae(d.root / rec["out"]), open_job_cache(d.root, cache_out)


def activation_grid(d: ReportData, device: Any, n_top: int = 5) -> str:
    """Fig. 5 as HTML: per backbone, the mean-representative and a top-5 % Moran feature with top images."""
    from visae.report.features import ImageLookup, feature_strips

    backbones = d.backbones(d.main)
    cells: dict[str, list[tuple[str, str]]] = {}
    for b in backbones:
        rec = _pick_sae(d, b)
        if rec is None:
            continue
        m1json = json.loads((d.root / rec["eval"] / "m1.json").read_text(encoding="utf-8"))
        min_valid = int(m1json.get("config", {}).get("min_valid_images", 50))
        t = pd.read_parquet(d.root / rec["eval"] / "m1_features.parquet")
        t = t[(t["n_valid_images"] >= min_valid) & np.isfinite(t["mean_I"])]
        if t.empty:
            continue
        mean_i = float(t["mean_I"].mean())
        rep = int(t.loc[(t["mean_I"] - mean_i).abs().idxmin(), "feature"])
        q95 = float(t["mean_I"].quantile(0.95))
        top = t[t["mean_I"] >= q95]
        high = int(top.loc[(top["mean_I"] - float(top["mean_I"].median())).abs().idxmin(), "feature"])
        sae, cache = _open_sae_and_cache(d, rec)
        scan = _scan(d, rec, sae, cache, device, n_top)
        strips = feature_strips(sae, cache, scan, [rep, high], device, ImageLookup(cache))
        scores = dict(zip(t["feature"].astype(int), t["mean_I"].astype(float), strict=True))
        cells[b] = [(strips.get(f, ""), f"feature {f}: I = {scores[f]:.3f}") for f in (rep, high)]
        cells[b].append(("", f"{rec['family']} {rec['expansion']}× K={rec['k']}"))
    if not cells:
        raise NotEnoughData("no SAE of the main slice has per-feature Moran's I (m1 with write_features)")
    head = "".join(f"<th>{_esc(d.label(b))}<br><span class='small'>{_esc(cells[b][2][1])}</span></th>" for b in cells)
    rows = []
    for r, name in enumerate(("mean-representative", "top 5 % Moran's I")):
        tds = "".join(
            f"<td class='cell'>{(f'<img class=fig alt=feature src=data:image/png;base64,{cells[b][r][0]}>') if cells[b][r][0] else '—'}"
            f"<span class='small'>{_esc(cells[b][r][1])}</span></td>" for b in cells)
        rows.append(f"<tr><th>{name}</th>{tds}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def feature_browser(d: ReportData, device: Any, per_key: int = 64, n_top: int = 5, size: int = 56) -> str:
    """The feature browser page: every SAE, features sortable by Moran's I, M5 and frequency."""
    from visae.report.features import ImageLookup, feature_strips

    entries = []
    for rec in d.saes:
        eval_dir = d.root / rec["eval"]
        if not (eval_dir / "done.json").exists():
            continue
        try:
            sae, cache = _open_sae_and_cache(d, rec)
        except Exception:
            continue
        scan = _scan(d, rec, sae, cache, device, n_top)
        moran = np.full(sae.d_sae, np.nan)
        if (eval_dir / "m1_features.parquet").exists():
            t = pd.read_parquet(eval_dir / "m1_features.parquet")
            moran[t["feature"].to_numpy(dtype=int)] = t["mean_I"].to_numpy(dtype=float)
        ms = np.full(sae.d_sae, np.nan)
        if (eval_dir / "m5_features.parquet").exists():
            t = pd.read_parquet(eval_dir / "m5_features.parquet")
            if len(t):
                ms[t["feature"].to_numpy(dtype=int)] = t["ms"].to_numpy(dtype=float)
        chosen: list[int] = []
        for key in (moran, ms, scan.frequency_f):
            valid = np.where(np.isfinite(key) & (scan.frequency_f > 0))[0]
            order = valid[np.argsort(-key[valid], kind="stable")][:per_key]
            chosen.extend(int(f) for f in order if int(f) not in chosen)
        strips = feature_strips(sae, cache, scan, chosen, device, ImageLookup(cache), size=size)
        feats = [{"f": f, "moran": None if not np.isfinite(moran[f]) else round(float(moran[f]), 4),
                  "m5": None if not np.isfinite(ms[f]) else round(float(ms[f]), 4),
                  "freq": round(float(scan.frequency_f[f]), 4), "img": strips.get(f, "")} for f in chosen]
        entries.append({"id": rec["sae_id"], "label": f"{d.label(rec['backbone'])} L{rec['layer']} {rec['family']} "
                        f"{rec['expansion']}× K={rec['k']}", "n_images": scan.n_images, "features": feats})
    payload = json.dumps({"saes": entries}).replace("</", "<\\/")
    return BROWSER_TEMPLATE.replace("/*DATA*/null", payload).replace("/*CSS*/", CSS)


BROWSER_TEMPLATE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>visae feature browser</title>
<style>/*CSS*/
#list tr{cursor:pointer}#list tr:hover{background:#eef}#detail img{image-rendering:pixelated;width:100%}
#detail{position:sticky;top:0;background:#fff;border:1px solid #ddd;padding:.6em;min-height:4em}
.layout{display:grid;grid-template-columns:3fr 2fr;gap:1em;align-items:start}</style></head>
<body><main><h1>Feature browser</h1>
<p class="small">Top images of each feature with its patch activation map overlaid (brighter = stronger).
Features shown: the top ones by each sort key. Click a row to open a feature.</p>
<p>SAE <select id="sae"></select> sort by <select id="key"><option value="moran">Moran's I</option>
<option value="m5">M5 (MS)</option><option value="freq">frequency</option></select>
<span id="count" class="small"></span></p>
<div class="layout"><table id="list"><thead><tr><th>feature</th><th>Moran's I</th><th>M5</th><th>freq.</th>
<th>top images</th></tr></thead><tbody></tbody></table><div id="detail">select a feature</div></div>
</main><script>
const DATA = /*DATA*/null;
const saeSel = document.getElementById('sae'), keySel = document.getElementById('key');
const body = document.querySelector('#list tbody'), detail = document.getElementById('detail');
function fmt(v){return v===null||v===undefined?'—':Number(v).toFixed(3);}
DATA.saes.forEach((s,i)=>{const o=document.createElement('option');o.value=i;o.textContent=s.label;saeSel.appendChild(o);});
function openFeature(s,f){
  detail.innerHTML='';
  const h=document.createElement('h3');h.textContent=s.label+' — feature '+f.f;detail.appendChild(h);
  const p=document.createElement('p');p.textContent="Moran's I "+fmt(f.moran)+', M5 '+fmt(f.m5)+', fires on '+(100*f.freq).toFixed(1)+'% of '+s.n_images+' images';detail.appendChild(p);
  if(f.img){const im=document.createElement('img');im.alt='feature '+f.f;im.src='data:image/png;base64,'+f.img;im.className='fig';detail.appendChild(im);}
  detail.dataset.feature=String(f.f);
}
function render(){
  body.innerHTML='';
  if(!DATA.saes.length){body.innerHTML='<tr><td colspan=5>no SAE evaluated yet</td></tr>';return;}
  const s=DATA.saes[Number(saeSel.value)||0], key=keySel.value;
  const feats=s.features.slice().sort((a,b)=>((b[key]??-Infinity)-(a[key]??-Infinity)));
  document.getElementById('count').textContent=feats.length+' features';
  feats.forEach(f=>{
    const tr=document.createElement('tr');tr.className='feature-row';tr.dataset.feature=String(f.f);
    tr.innerHTML='<td>'+f.f+'</td><td>'+fmt(f.moran)+'</td><td>'+fmt(f.m5)+'</td><td>'+fmt(f.freq)+'</td><td></td>';
    if(f.img){const im=document.createElement('img');im.alt='feature '+f.f;im.src='data:image/png;base64,'+f.img;im.className='thumb';tr.lastChild.appendChild(im);}
    tr.addEventListener('click',()=>openFeature(s,f));body.appendChild(tr);
  });
}
saeSel.addEventListener('change',render);keySel.addEventListener('change',render);render();
</script></body></html>"""


# --- the report -------------------------------------------------------------------------------------------

def _study_params(root: Path) -> dict[str, Any]:
    """The report job's parameters re-derived from the study's own ``study.yaml`` (empty when absent)."""
    path = root / "study.yaml"
    if not path.exists():
        return {}
    from visae.config import build_config, read_yaml
    from visae.study.config import StudyConfig
    from visae.study.plan import plan_study

    cfg = build_config(StudyConfig, read_yaml(path), source=str(path))
    report_jobs = plan_study(cfg).of_kind("report")
    return dict(report_jobs[0].params) if report_jobs else {}


def load_report_data(root: Path, params: dict[str, Any]) -> ReportData:
    """Results, details and every analysis of a study folder."""
    from visae.analysis.hypotheses import Hypothesis
    from visae.analysis.run import AnalysisConfig, analyze
    from visae.analysis.schema import primary_slice, validate_results
    from visae.study.results import read_results

    df = read_results(root)
    det = read_results(root, details=True)
    analysis: dict[str, Any] = {}
    family: str | None = None
    layer: int | None = None
    if len(df):
        df = validate_results(df)
        family, layer = primary_slice(df)
        hyps = params.get("hypotheses") or []
        cfg = AnalysisConfig(hypotheses=[Hypothesis(**h) for h in hyps]) if hyps else AnalysisConfig()
        analysis = analyze(df, cfg)
    if len(det):
        det = validate_results(det, source="details table")
    return ReportData(root=root, results=df, details=det, analysis=analysis, family=family, layer=layer,
                      labels=dict(params.get("labels", {})), saes=list(params.get("saes", [])))


def write_report(study_dir: Path | str, out_dir: Path | str | None = None, params: dict[str, Any] | None = None,
                 device: str = "auto") -> dict[str, Path]:
    """Write ``index.html`` and ``features.html`` for a study folder; returns their paths."""
    from visae.device import pick_device
    from visae.errors import StudyError

    root = Path(study_dir).resolve()
    if not root.is_dir():
        raise StudyError(f"{root}: study folder not found")
    params = params if params is not None else _study_params(root)
    out = Path(out_dir) if out_dir is not None else root / "report"
    dev = pick_device(device)
    d = load_report_data(root, params)
    r = Report()
    if d.results.empty:
        r.raw(_note("the study has no results yet (results/results.parquet is missing or empty)"))
    r.section("overview", "Overview")
    n_saes = d.results["sae_id"].replace("", np.nan).nunique() if "sae_id" in d.results else 0
    r.raw(f"<p>{n_saes} SAE(s), {d.results['backbone'].nunique() if len(d.results) else 0} backbone(s); main slice: "
          f"family <b>{_esc(d.family)}</b>, layer <b>{_esc(d.layer)}</b>. Feature browser: "
          f"<a href='features.html'>features.html</a>.</p>")
    for n in d.analysis.get("notes", []):
        r.raw(f"<p class='small'>{_esc(n)}</p>")
    r.figure("Figure 1a — metric profile", "Per-backbone means over configurations, min–max normalized per metric "
             "across backbones; lower-is-better metrics (M2, M7) inverted so 1 is best.", lambda: fig_profile(d))
    r.figure("Figure 1b — per-feature Moran's I", "Distribution of per-feature mean Moran's I of evaluable features "
             "(all SAEs of the main slice pooled) against the null −1/(P−1).", lambda: fig_moran_distributions(d))
    r.section("dissociations", "Metric dissociations")
    r.figure("Figure 2a — FVU vs preservation", "One point per SAE configuration.", lambda: fig_fvu_preservation(d))
    r.figure("Figure 2b — metric × task correlations", "Cross-backbone Spearman ρ of per-backbone means.",
             lambda: fig_correlation_heatmap(d))
    r.section("variance", "Variance decomposition")
    r.figure("Figure 3 — variance decomposition", "Two-way ANOVA η² (backbone, configuration, residual).",
             lambda: fig_variance(d))
    r.table("Table 3 — η² per metric", "App. B.", lambda: table_variance(d))
    r.section("layers", "Layer ablation")
    r.figure("Figure 4 — layer ablation", "Mean over configurations at each layer, per backbone.",
             lambda: fig_layer_ablation(d))
    r.section("spatial", "Spatial coherence")
    r.table("Table 4 — raw-backbone Moran's I", "Moran's I on raw activation channels (App. G).", lambda: table_raw(d))
    r.raw("<h3>Figure 5 — activation maps</h3><p class='small'>Per backbone (SAE nearest 16× K=192): the "
          "evaluable feature whose Moran's I is closest to the mean, and one from the top 5 %, with its top images "
          "and patch activation overlays.</p>")
    try:
        r.raw(activation_grid(d, dev))
        r.n_figures += 1
    except NotEnoughData as e:
        r.raw(_note(str(e)))
    except Exception as e:
        r.raw(_note(f"could not draw: {type(e).__name__}: {e}"))
    r.section("probing", "Concept detection")
    r.figure("Figure 6 — sparse probing curves", "M4 AUC against the number of features k.",
             lambda: fig_probing_curves(d))
    r.table("Table 6 — cross-domain probes (M6)", "Mean ± std over configurations.", lambda: table_m6(d))
    r.table("Table 7 — M7 threshold sensitivity", "Absorption rate per (α, β); lowest backbone per row.",
            lambda: table_m7(d))
    r.section("tasks", "Downstream tasks and hypotheses")
    r.figure("Figure 7 — per-task correlations", "Spearman ρ of each metric with each task.",
             lambda: fig_task_panels(d))
    r.table("Hypotheses H1–H4", "Pre-registered thresholds (§4.5).", lambda: table_hypotheses(d))
    r.table("Table 8 — codes lift", "Spearman ρ between raw performance and codes lift (App. O).",
            lambda: table_lift(d))
    r.table("Table 9 — cross-family rank consistency", "App. Q.", lambda: table_consistency(d))
    r.section("guide", "Practitioner guide")
    r.table("Backbone per task (App. P, Fig. 8)", "Best backbone by mean task score; supporting metric = highest |ρ| "
            "with the task across backbones. Read with the sample size in mind.", lambda: practitioner_guide(d))
    stamp = time.strftime("%Y-%m-%d %H:%M")
    title = f"visae report — {params.get('name', root.name)}"
    index = out / "index.html"
    atomic_write_text(index, r.render(title, f"study folder {root}; written {stamp}"))
    features = out / "features.html"
    try:
        page = feature_browser(d, dev, per_key=int(params.get("browser_features", 64)))
    except Exception as e:
        page = BROWSER_TEMPLATE.replace("/*DATA*/null", json.dumps({"saes": []})).replace("/*CSS*/", CSS)
        page = page.replace("<h1>Feature browser</h1>", f"<h1>Feature browser</h1>{_note(f'{type(e).__name__}: {e}')}")
    atomic_write_text(features, page)
    return {"report": index, "features": features}
