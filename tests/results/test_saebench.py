"""SAEBench-shaped results: ``visae eval`` writes them beside its records, ``visae saebench`` converts a
folder, the committed JSON Schemas are what the models generate, and every file written validates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import torch
from typer.testing import CliRunner

from visae.backbones.layout import TokenLayout
from visae.cache.reader import open_cache
from visae.cache.testing import write_synthetic_cache
from visae.cli import app
from visae.metrics.evaluate import evaluate
from visae.results.saebench import DIMENSIONS, json_schemas
from visae.sae.checkpoint import save_sae
from visae.sae.registry import make_sae

ROOT = Path(__file__).parents[2]
SCHEMAS = ROOT / "schemas"
LAYOUT = TokenLayout(("cls",), 6, 7, 14)


def _schema(stem: str) -> dict:
    return json.loads((SCHEMAS / f"{stem}.schema.json").read_text(encoding="utf-8"))


def test_committed_schemas_are_what_the_script_writes(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_schemas.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    committed = sorted(p.name for p in SCHEMAS.glob("*.schema.json"))
    assert committed == sorted(f"{stem}.schema.json" for stem in json_schemas())
    for name in committed:
        assert (tmp_path / name).read_text() == (SCHEMAS / name).read_text(), f"regenerate {name}"


def _eval(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(24, 42, 4)).astype(np.float32)
    cache_dir = write_synthetic_cache(tmp_path / "cache", acts, np.arange(24) % 3, ["a", "b", "c"], LAYOUT,
                                      shard_images=8)
    cache = open_cache(cache_dir)
    torch.manual_seed(0)
    sae = make_sae("topk", 4, d_sae=16, k=3)
    sae.set_normalization(torch.from_numpy(cache.mean_d), cache.std)
    save_sae(sae, tmp_path / "sae", provenance={"backbone": "test"})
    evaluate(tmp_path / "sae", cache, metrics=["m1", "m2"], out_dir=tmp_path / "eval",
             configs={"m1": {"min_valid_images": 5}}, device="cpu", group_size=8, bootstrap={"n_boot": 0})
    return tmp_path / "eval"


def test_eval_writes_saebench_files_that_validate(tmp_path: Path) -> None:
    out = _eval(tmp_path)
    record_schema, saebench_schema = _schema("visae_result_record"), _schema("saebench_result")
    for metric in ("m1", "m2"):
        record = json.loads((out / f"{metric}.json").read_text())
        jsonschema.validate(record, record_schema)
        doc = json.loads((out / "saebench" / f"{metric}.json").read_text())
        jsonschema.validate(doc, saebench_schema)
        assert doc["eval_type_id"] == f"visae_{metric}" and len(doc["eval_id"]) == 36
        assert list(doc["eval_result_metrics"]) == [DIMENSIONS[metric]]
        group = doc["eval_result_metrics"][DIMENSIONS[metric]]
        assert group["value"] == record["value"]  # the same numbers, regrouped
        for k, v in record["result"].items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "value":
                assert group[k] == v
        assert doc["eval_config"] == record["config"]
        cfg = doc["sae_cfg_dict"]
        assert cfg["family"] == "topk" and cfg["provenance"]["backbone"] == "test"
        assert doc["visae_version"] and doc["cache"]["cache"] == record["inputs"]["cache"]
    m1 = json.loads((out / "saebench" / "m1.json").read_text())
    table = pd.read_parquet(out / "m1_features.parquet")
    assert len(m1["eval_result_details"]) == len(table) == 16
    assert [r["feature"] for r in m1["eval_result_details"]] == table["feature"].tolist()


def test_cli_converts_a_folder_and_refuses_an_empty_one(tmp_path: Path) -> None:
    out = _eval(tmp_path)
    res = CliRunner().invoke(app, ["saebench", str(tmp_path), str(tmp_path / "sb")])
    assert res.exit_code == 0, res.output
    written = sorted(p.relative_to(tmp_path / "sb").as_posix() for p in (tmp_path / "sb").rglob("*.json"))
    assert written == ["eval/m1.json", "eval/m2.json"]
    for p in (tmp_path / "sb").rglob("*.json"):
        jsonschema.validate(json.loads(p.read_text()), _schema("saebench_result"))
    assert out.is_dir()
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["saebench", str(tmp_path / "empty"), str(tmp_path / "sb2")])
    assert res.exit_code == 2 and "no visae result records" in res.output


def test_foreign_checkpoint_results_carry_its_config(tmp_path: Path) -> None:
    """An SAE evaluated from another library's files: sae_cfg_dict still says what was evaluated."""
    from visae.sae.export import export_saes

    _eval(tmp_path)
    export_saes(tmp_path / "sae", tmp_path / "lens", fmt="saelens")
    cache = open_cache(tmp_path / "cache")
    evaluate(tmp_path / "lens", cache, metrics=["m2"], out_dir=tmp_path / "eval_lens", device="cpu",
             group_size=8, bootstrap={"n_boot": 0})
    doc = json.loads((tmp_path / "eval_lens" / "saebench" / "m2.json").read_text())
    jsonschema.validate(doc, _schema("saebench_result"))
    assert doc["sae_cfg_dict"]["family"] == "topk" and doc["sae_cfg_dict"]["k"] == 3
    assert "saelens" in doc["sae_cfg_dict"]["hparams"]["source"]
    ours = json.loads((tmp_path / "eval" / "saebench" / "m2.json").read_text())
    mine = doc["eval_result_metrics"]["reconstruction"]
    assert abs(mine["value"] - ours["eval_result_metrics"]["reconstruction"]["value"]) < 1e-4


def test_per_feature_lists_become_details_that_validate(tmp_path: Path) -> None:
    """M5's per-feature table holds lists (top images, their activations and weights): they pass through as
    lists and validate, instead of failing the evaluation job."""
    from visae.results.saebench import write_saebench

    out = _eval(tmp_path)
    record = json.loads((out / "m1.json").read_text(encoding="utf-8"))
    record["metric"] = "m5"
    (out / "m5.json").write_text(json.dumps(record), encoding="utf-8")
    pd.DataFrame({"feature": [0, 1], "score": [0.5, float("nan")], "top_images": [[3, 1, 2], [0, 4, 5]],
                  "top_weights": [[1.0, 0.5, 0.25], [1.0, 0.0, 0.0]]}).to_parquet(out / "m5_features.parquet")
    written = json.loads(write_saebench(out / "m5.json").read_text(encoding="utf-8"))
    jsonschema.validate(written, _schema("saebench_result"))
    assert written["eval_result_details"] == [
        {"feature": 0, "score": 0.5, "top_images": [3, 1, 2], "top_weights": [1.0, 0.5, 0.25]},
        {"feature": 1, "score": None, "top_images": [0, 4, 5], "top_weights": [1.0, 0.0, 0.0]}]
