"""Fake stage runners for fast study tests: deterministic numbers with planted structure, no models."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from visae.io import atomic_write_json
from visae.study.job import Job
from visae.study.protocol import write_done
from visae.study.stages import STAGES

BACKBONE_LEVEL = {"bb-a": 0.3, "bb-b": 0.2, "bb-c": 0.1, "bb-d": 0.0}


def _noise(*parts: Any) -> float:
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(h[:4], "little") / 2**32 - 0.5


def fake_cache(job: Job, p: Any, root: Path, device: str) -> dict[str, Any]:
    (root / job.outputs[0]).mkdir(parents=True, exist_ok=True)
    return {"cache": ""}


def fake_train(job: Job, p: Any, root: Path, device: str) -> dict[str, Any]:
    for m in p.saes:
        out = root / m.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "weights.txt").write_text(json.dumps(m.model_dump(mode="json"), sort_keys=True))
        write_done(out, {"job_id": job.id, "kind": "sae", "sae_id": m.sae_id})
    return {}


def fake_eval(job: Job, p: Any, root: Path, device: str) -> dict[str, Any]:
    sae = json.loads((root / p.sae / "weights.txt").read_text())
    level = BACKBONE_LEVEL[p.backbone] + (0.05 if sae["layer"] != 3 else 0.0)
    out = root / job.outputs[0]
    for i, metric in enumerate(["m1", "m2", "m3", "m4", "m5", "m6", "m7"]):
        value = level * (1 + 0.1 * i) + 0.01 * _noise(sae["sae_id"], metric)
        result: dict[str, Any] = {"metric": metric, "value": value,
                                  "higher_is_better": metric not in ("m2", "m7"),
                                  "note": ""}
        if metric == "m2":
            result["mean_l0"] = float(sae["k"])
        if metric == "m4":
            result["curve"] = {str(k): value + 0.01 * np.log2(k) for k in (1, 2, 4, 8)}
        if metric == "m7":
            result["grid"] = [{"alpha": a, "beta": b, "rate": value + a - b} for a in (0.7, 0.8)
                              for b in (0.3, 0.5)]
        if metric == "m1":
            result["null_expectation"] = -1 / 15
            feats = pd.DataFrame({"feature": np.arange(20), "mean_I": level + 0.05 * np.sin(np.arange(20)),
                                  "n_valid_images": np.full(20, 60)})
            out.mkdir(parents=True, exist_ok=True)
            feats.to_parquet(out / "m1_features.parquet")
        atomic_write_json(out / f"{metric}.json", {"metric": metric, "value": value, "result": result,
                                                   "config": {"min_valid_images": 50}})
    return {}


def fake_raw(job: Job, p: Any, root: Path, device: str) -> dict[str, Any]:
    v = BACKBONE_LEVEL[p.backbone] * 1.5
    atomic_write_json(root / job.outputs[0] / "raw.json", {"metric": "raw", "value": v, "result": {
        "metric": "raw", "value": v, "higher_is_better": True, "null_expectation": -1 / 15, "z": 50.0 * v}})
    return {}


def fake_task(job: Job, p: Any, root: Path, device: str) -> dict[str, Any]:
    base = BACKBONE_LEVEL[p.backbone] + 0.5
    rows = [{"metric": p.task.name, "features": "raw", "value": base, "sae_id": ""}]
    rows += [{"metric": p.task.name, "features": "codes", "value": base * 0.9 + 0.01 * _noise(s.sae_id),
              "sae_id": s.sae_id} for s in p.saes]
    atomic_write_json(root / job.outputs[0] / "task.json", {"task": p.task.to_dict(), "rows": rows})
    return {}


def fake_features(job: Job, p: Any, root: Path, device: str) -> dict[str, Any]:
    """No images to scan (the fake SAEs are not models): views without cells or entries."""
    atomic_write_json(root / job.outputs[0] / "fig5.json", {"family": None, "layer": None, "cells": {}})
    atomic_write_json(root / job.outputs[0] / "browser.json", {"saes": []})
    return {}


FAKES = {"cache": fake_cache, "train": fake_train, "eval": fake_eval, "raw": fake_raw, "task": fake_task,
         "features": fake_features}


def use_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the model stages by the fakes (collect, analysis and report stay real)."""
    for kind, fn in FAKES.items():
        monkeypatch.setitem(STAGES, kind, replace(STAGES[kind], run=fn))


def fake_study_yaml(tmp_path: Path, backbones: tuple[str, ...] = ("bb-a", "bb-b", "bb-c", "bb-d"),
                    **extra: Any) -> Path:
    data = {
        "name": "fake", "out_dir": "out", "device": "cpu",
        "backbones": [{"name": b, "label": b.upper()} for b in backbones],
        "layers": [11],
        "saes": [{"name": "main", "family": "batchtopk", "expansions": [2, 4], "ks": [8, 16]},
                 {"name": "jumprelu", "family": "jumprelu", "expansions": [4], "ks": [8]},
                 {"name": "layer-ablation", "family": "batchtopk", "expansions": [2], "ks": [8],
                  "layers": [3],
                  "backbones": list(backbones[:2])}],
        "data": {"train": {"spec": "offline:digits"}, "eval": {"spec": "offline:digits", "split": "test"}},
        "metrics": ["m1", "m2", "m3", "m4", "m5", "m7"],
        "tasks": [{"name": "retrieval_r1", "kind": "retrieval"},
                  {"name": "cub_acc", "kind": "classification"}],
        "browser_features": 4,
        **extra,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
