"""``write_report``: the study report ``index.html`` (figures, tables, hypotheses, practitioner guide) and
``features.html`` (feature browser). Both are self-contained: images are base64 PNG, CSS and JS are
inline, no network. The report reads the study folder only (visae.report.data): it plans, analyses and
encodes nothing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from visae.io import atomic_write_text
from visae.report import figures as F
from visae.report import tables as T
from visae.report.browser import browser_page
from visae.report.data import ReportData, load_report_data, study_names
from visae.report.grid import activation_grid
from visae.report.guide import practitioner_guide
from visae.report.page import Report, esc, note
from visae.results.layout import BROWSER_PAGE, REPORT_DIR, REPORT_PAGE, RESULTS_DIR, RESULTS_FILE


def _overview(r: Report, d: ReportData) -> None:
    if d.results.empty:
        r.raw(note("the study has no results yet (results/results.parquet is missing or empty)"))
    r.section("overview", "Overview")
    n_saes = d.results["sae_id"].replace("", np.nan).nunique() if "sae_id" in d.results else 0
    r.raw(f"<p>{n_saes} SAE(s), {d.results['backbone'].nunique() if len(d.results) else 0} backbone(s); main "
          f"slice: family <b>{esc(d.family)}</b>, layer <b>{esc(d.layer)}</b>. Feature browser: "
          f"<a href='{BROWSER_PAGE}'>{BROWSER_PAGE}</a>.</p>")
    if d.controls:
        items = "".join(f"<li><b>{esc(d.label(b))}</b>: {esc(what)}</li>" for b, what in d.controls.items())
        r.raw("<p>Controls (marked as such in every table and figure; they count in the cross-backbone "
              f"n):</p><ul class='small'>{items}</ul>")
    for n in d.analysis.get("notes", []):
        r.raw(f"<p class='small'>{esc(n)}</p>")
    r.figure("Figure 1a — metric profile",
             "x: the headline metrics M1–M7; y: each backbone's mean over configurations, min–max "
             "normalized per metric across backbones (1 = best; lower-is-better M2 and M7 inverted). "
             "One line per backbone.",
             lambda: F.fig_profile(d))
    r.table("Uncertainty — headline metrics per backbone", "Mean over the SAEs of the main slice with a 95 % "
            "Student-t interval over those SAEs; beside it, the median width of each SAE's 95 % Poisson "
            "bootstrap interval over evaluation images (the image sample's share of the uncertainty).",
            lambda: T.table_uncertainty(d))
    r.figure("Figure 1b — per-feature Moran's I",
             "x: backbone (n = evaluable features, all SAEs of the main slice pooled); y: per-feature "
             "mean Moran's I. Violins show the distribution, the bar its median, the dashed line the "
             "spatial-random null −1/(P−1).",
             lambda: F.fig_moran_distributions(d))


def _metrics_sections(r: Report, d: ReportData) -> None:
    r.section("dissociations", "Metric dissociations")
    r.figure("Figure 2a — FVU vs preservation", "x: M2 FVU (lower is better); y: M3 preservation "
             "acc(recon)/acc(raw). One point per SAE configuration, coloured by backbone.",
             lambda: F.fig_fvu_preservation(d))
    r.figure("Figure 2b — metric × task correlations", "Rows: metrics; columns: downstream tasks; colour: "
             "cross-backbone Spearman ρ of per-backbone means (−1 blue … +1 red).",
             lambda: F.fig_correlation_heatmap(d))
    r.section("variance", "Variance decomposition")
    r.figure("Figure 3 — variance decomposition", "x: metric; y: share of its variance (two-way ANOVA η²) "
             "explained by backbone, by SAE configuration, and left as residual.",
             lambda: F.fig_variance(d))
    r.table("Table 3 — η² per metric", "App. B.", lambda: T.table_variance(d))
    if T.has_recovery(d):  # a synthetic study: the planted features are known
        r.section("recovery", "Recovery of planted features")
        r.table("Recovery — F1 and MCC per family, width and K",
                "Against the ground truth of each synthetic preset (visae synth): F1 and precision/recall "
                "as in SynthSAEBench, MCC = mean |cos| of the Hungarian-matched atoms, recall@τ = atoms "
                "matched at |cos| ≥ τ (recovery.cos_threshold), absorbed share of planted children's tokens "
                "(docs/synthetic.md).", lambda: T.table_recovery(d))
    r.section("layers", "Layer ablation")
    r.figure("Figure 4 — layer ablation", "One panel per metric; x: backbone; y: the metric's mean over "
             "configurations, one bar per layer.",
             lambda: F.fig_layer_ablation(d))
    r.section("spatial", "Spatial coherence")
    r.table("Table 4 — raw-backbone Moran's I", "Moran's I on raw activation channels (App. G).",
            lambda: T.table_raw(d))
    r.html("Figure 5 — activation maps", "Per backbone (SAE nearest 16× K=192): the evaluable feature whose "
           "Moran's I is closest to the mean, and one from the top 5 %, with its top images and patch "
           "activation overlays.", lambda: activation_grid(d))
    r.section("probing", "Concept detection")
    r.figure("Figure 6 — sparse probing curves", "One panel per backbone; x: feature budget k (log scale); "
             "y: M4 mean one-vs-rest AUC; one line per SAE configuration.",
             lambda: F.fig_probing_curves(d))
    r.table("Table 6 — cross-domain probes (M6)", "Mean ± std over configurations.", lambda: T.table_m6(d))
    r.table("Table 7 — M7 threshold sensitivity", "Absorption rate per (α, β); lowest backbone per row.",
            lambda: T.table_m7(d))


def _task_sections(r: Report, d: ReportData) -> None:
    r.section("tasks", "Downstream tasks and hypotheses")
    r.figure("Figure 7 — per-task correlations", "One panel per task; x: metric; y: cross-backbone "
             "Spearman ρ of the metric with the task.",
             lambda: F.fig_task_panels(d))
    r.table("Hypotheses", "Pre-registered thresholds (§4.5; the study's own when it sets 'hypotheses').",
            lambda: T.table_hypotheses(d))
    r.table("Table 8 — codes lift", "Spearman ρ between raw performance and codes lift (App. O).",
            lambda: T.table_lift(d))
    r.table("Table 9 — cross-family rank consistency", "App. Q.", lambda: T.table_consistency(d))
    r.table("Table 9 — left out by the convergence filter",
            "Configurations of target-L0 families (JumpReLU, Gated) with |L0 − target| > 2 (App. Q).",
            lambda: T.table_consistency_excluded(d))
    r.section("guide", "Practitioner guide")
    r.table("Backbone per task (App. P, Fig. 8)",
            "Best backbone by mean task score; supporting metric = highest |ρ| "
            "with the task across backbones. Read with the sample size in mind.",
            lambda: practitioner_guide(d))


def _verdict_table(r: Report, title: str, caption: str, verdict: str, table: object) -> None:
    import pandas as pd

    r.raw(f"<p><b>Verdict:</b> {esc(verdict)}</p>")

    def make() -> pd.DataFrame:
        from visae.report.data import NotEnoughData

        if not isinstance(table, pd.DataFrame) or table.empty:
            raise NotEnoughData("nothing to tabulate (see the verdict)")
        return table

    r.table(title, caption, make)


def _ablation_sections(r: Report, d: ReportData) -> None:
    """The paper's open questions (App. C, App. G, §5.5, seeds), one section each
    (visae.analysis.ablations)."""
    import pandas as pd

    from visae.analysis import ablations as A
    from visae.results.hypotheses import PREREGISTERED, Hypothesis

    if d.results.empty:
        return
    (res, syn), (det, syn_det) = A.split_synthetic(d.results), A.split_synthetic(d.details)
    if res.empty:  # a study of synthetic presets only: the questions are asked of them
        res, det = syn, syn_det
    r.section("ablation-whitening", "Open question: whitening before SAE training (App. C)")
    verdict, table = A.whitening_ablation(res)
    _verdict_table(r, "Whitened − unwhitened twins", "Mean paired difference per metric (same backbone, "
                   "layer, family, expansion, k, seed) with a 95 % Student-t interval over the pairs.",
                   verdict, table)
    r.section("ablation-grid", "Open question: grid resolution (App. G)")
    for metric, what in (("m1", "M1 (SAE features)"), ("raw", "raw diagnostic (backbone channels)")):
        verdict, table = A.grid_ablation(res, det, metric=metric)
        _verdict_table(r, f"{what}: native vs resampled grid", "Mean Moran's I per backbone on its native "
                       "grid and after bilinear resampling to the common grid (m1.grid / raw.grid); the "
                       "leader's "
                       "gap over the runner-up with a 95 % Welch interval over SAEs.", verdict, table)
        if len(syn):
            verdict, table = A.synthetic_grid_check(syn, syn_det, metric=metric)
            _verdict_table(r, f"{what}: synthetic known answer", "Synthetic presets (synth:): the "
                           "spatially random preset at Moran's null on its native grid (±0.03), and the "
                           "planted spatial gap over it above 0 (95 % Welch interval) natively and after "
                           "resampling.", verdict, table)
    r.section("ablation-m5d", "Open question: discriminative monosemanticity (§5.5)")
    hyps: list[Hypothesis] = list(PREREGISTERED)
    ht = d.analysis.get("hypotheses")
    if isinstance(ht, pd.DataFrame) and len(ht):
        hyps = [Hypothesis(id=str(h["id"]), metric=str(h["metric"]), task=str(h["task"]),
                           threshold=float(h["threshold"]), description=str(h.get("description", "")))
                for _, h in ht.iterrows()]
    verdict, table, hyp = A.m5d_ablation(res, hyps)
    _verdict_table(r, "M5 and M5d per backbone", "Mean over SAEs with a 95 % Student-t interval over SAEs.",
                   verdict, table)
    if isinstance(hyp, pd.DataFrame) and len(hyp):
        r.table("H2 asked of M5 and of M5d", "Same task and threshold (§4.5).",
                lambda: hyp[["id", "metric", "task", "threshold", "n", "rho", "p", "verdict"]])
    r.section("ablation-stability", "Open question: seed stability")
    verdict, table = A.stability_ablation(res, det)
    _verdict_table(r, "Matched decoder cosine across seeds", "Hungarian matching of decoder atoms on cosine "
                   "between every pair of seeds of a configuration; per backbone and family the mean over "
                   "configurations (95 % Student-t interval over configurations, or the atom bootstrap for "
                   "one), beside the expectation for independent random dictionaries.", verdict, table)
    if len(syn):
        verdict, table = A.synthetic_stability_check(syn, syn_det)
        _verdict_table(r, "Seed stability: synthetic known answer", "Synthetic presets (synth:): SAEs "
                       "trained on a planted dictionary; met when the interval is above the random "
                       "expectation and the mean at least halfway from it to 1.", verdict, table)
        r.raw("<p>The synthetic presets carry no known answer for whitening or M5d (M5 needs image "
              "embeddings by an evaluator backbone): those sections read the image backbones only.</p>")


def build_report(d: ReportData) -> Report:
    """Every section of ``index.html``, in paper order, then the paper's open questions."""
    r = Report()
    _overview(r, d)
    _metrics_sections(r, d)
    _task_sections(r, d)
    _ablation_sections(r, d)
    return r


def write_report(study_dir: Path | str, out_dir: Path | str | None = None, name: str | None = None,
                 labels: dict[str, str] | None = None, allow_empty: bool = False) -> dict[str, Path]:
    """Write ``index.html`` and ``features.html`` for a study folder; returns their paths. ``name`` and
    ``labels`` (backbone display names) default to the study's ``study.yaml``. A folder without
    ``results/results.parquet`` (empty, not run yet, or its table deleted) is a StudyError unless
    ``allow_empty`` (then the report holds notes instead of figures)."""
    from visae.errors import StudyError
    from visae.io import check_output_dir
    from visae.results.table import is_study, not_a_study

    root = Path(study_dir).resolve()
    if not root.is_dir():
        raise StudyError(f"{root}: study folder not found" if not root.exists()
                         else not_a_study(root, "visae report"))
    if not is_study(root) and any(root.iterdir()):  # an empty folder is a study not run yet: notes, no error
        raise StudyError(not_a_study(root, "visae report"))
    results = root / RESULTS_DIR / RESULTS_FILE
    if not allow_empty and not results.is_file():
        raise StudyError(f"{root}: no results table ({RESULTS_DIR}/{RESULTS_FILE} is missing), so the report "
                         "would be empty; run 'visae study run STUDY.yaml' first (it rebuilds a deleted "
                         "table)")
    if out_dir is not None:
        check_output_dir(out_dir)
    if name is None or labels is None:
        yaml_name, yaml_labels = study_names(root)
        name = yaml_name if name is None else name
        labels = yaml_labels if labels is None else labels
    out = Path(out_dir) if out_dir is not None else root / REPORT_DIR
    d = load_report_data(root, labels)
    r = build_report(d)
    index = out / REPORT_PAGE
    atomic_write_text(index, r.render(f"visae report — {name}",
                                      f"study folder {root}; written {time.strftime('%Y-%m-%d %H:%M')}"))
    features = out / BROWSER_PAGE
    atomic_write_text(features, browser_page(d))
    return {"report": index, "features": features}
