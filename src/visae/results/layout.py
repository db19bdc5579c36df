"""The study folder: where each job kind writes, and the fixed files every reader looks for.

::

    <study>/study.yaml            resolved configuration (written by each run)
    <study>/study.lock            held by the running process
    <study>/caches/<job id>/      activation caches          (cache jobs)
    <study>/train/<job id>/       resumable training state   (train jobs, removed when done)
    <study>/saes/<sae id>/        trained SAEs               (train jobs)
    <study>/evals/<job id>/       <metric>.json + tables      (eval jobs)
    <study>/raw/<job id>/         raw.json + channel table    (raw jobs)
    <study>/tasks/<job id>/       task.json                   (task jobs)
    <study>/results/              results.parquet, details.parquet, saes.json (collect)
    <study>/analysis/             <table>.csv/.md/.parquet, analysis.md, notes.json (analysis)
    <study>/features/             fig5.json, browser.json     (features)
    <study>/report/               index.html, features.html   (report)
    <study>/logs/                 <kind>-<job id>.log of failed jobs

Every output folder is complete when it holds ``done.json`` (written last).
"""

from __future__ import annotations

STUDY_YAML = "study.yaml"
LOCK_FILE = "study.lock"
DONE_FILE = "done.json"
LOGS_DIR = "logs"

CACHES_DIR = "caches"
TRAIN_DIR = "train"
SAES_DIR = "saes"
EVALS_DIR = "evals"
RAW_DIR = "raw"
TASKS_DIR = "tasks"

RESULTS_DIR = "results"
RESULTS_FILE = "results.parquet"
DETAILS_FILE = "details.parquet"
SAE_INDEX_FILE = "saes.json"
"""``results/saes.json``: the study's SAEs (id, folders, backbone, layer, family, size, K) for readers."""

ANALYSIS_DIR = "analysis"
NOTES_FILE = "notes.json"

FEATURES_DIR = "features"
FIG5_FILE = "fig5.json"
BROWSER_FILE = "browser.json"

REPORT_DIR = "report"
REPORT_PAGE = "index.html"
BROWSER_PAGE = "features.html"

RAW_RECORD = "raw.json"
TASK_RECORD = "task.json"
M1_FEATURES = "m1_features.parquet"
M5_FEATURES = "m5_features.parquet"
