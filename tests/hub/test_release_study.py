"""A study that evaluates existing checkpoints: two fake hub repos × two configurations in the authors'
layout, from an offline hub cache, end to end (no train job; provenance in the results); studies/release.yaml
plans the 60 released SAEs; a checkpoint of another backbone is refused naming both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from visae.cli import app
from visae.errors import ConfigError
from visae.hub_testing import write_authors_repo
from visae.io import sha256_file

D = 32  # tiny-vit width (visae.study.testing)
REPOS = {"tiny-vit-a": "test/tiny-vit-a-saes", "tiny-vit-b": "test/tiny-vit-b-saes"}
STUDY = {
    "name": "release-tiny", "out_dir": "out", "device": "cpu", "plugins": ["visae.study.testing"],
    "backbones": [{"name": "tiny-vit-a"}, {"name": "tiny-vit-b"}],
    "layers": [1],
    "saes": [{"name": "release", "checkpoints": [{"backbone": b, "repo": r} for b, r in REPOS.items()]}],
    "data": {"eval": {"spec": "offline:digits", "split": "test", "max_images": 60},
             "ood": {"faces": {"spec": "offline:faces", "split": "all", "max_images": 40}}},
    "cache": {"batch_size": 32, "num_workers": 0},
    "metrics": ["m1", "m2", "m3", "m4", "m5", "m6"],
    "metric_configs": {"m1": {"min_valid_images": 5}, "m5": {"n_baseline_groups": 50}},
    "tasks": [{"name": "retrieval", "kind": "retrieval"}],
    "browser_features": 4,
}


def _write(folder: Path, study: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.yaml").write_text(yaml.safe_dump(study))
    return folder / "study.yaml"


@pytest.mark.slow
def test_release_study_end_to_end(hub_cache: Path, tmp_path: Path) -> None:
    from visae.results.table import read_results
    from visae.study.config import load_study_config
    from visae.study.plan import plan_study
    from visae.study.run import run_study

    snaps = {b: write_authors_repo(hub_cache, r, [(2, 4), (4, 8)], d_in=D, seed=i)
             for i, (b, r) in enumerate(REPOS.items())}
    cfg = load_study_config(_write(tmp_path, STUDY))
    plan = plan_study(cfg)
    kinds = [j.kind for j in plan.jobs]
    assert "train" not in kinds and kinds.count("checkpoint") == 4 and kinds.count("eval") == 4
    assert not any("train" in j.label.split() for j in plan.of_kind("cache"))  # no training cache either
    plan, summary = run_study(cfg)
    assert summary is not None and summary.ok, summary.describe(plan)
    root = Path(cfg.out_dir)
    df = read_results(root)
    assert df[df["metric"] == "m2"]["sae_id"].nunique() == 4
    assert {"m1", "m2", "m3", "m4", "m5", "m6", "raw", "task:retrieval_r1:codes"} <= set(df["metric"])
    m2 = df[df["metric"] == "m2"]
    assert sorted(zip(m2["backbone"], m2["expansion"], m2["k"], strict=True)) == [
        ("tiny-vit-a", 2.0, 4.0), ("tiny-vit-a", 4.0, 8.0), ("tiny-vit-b", 2.0, 4.0),
        ("tiny-vit-b", 4.0, 8.0)]
    # provenance: in the results table, the SAE index and each evaluation record
    source = json.loads(m2[m2["backbone"] == "tiny-vit-b"]["sae_config"].iloc[0])["source"]
    assert source["repo"] == REPOS["tiny-vit-b"] and source["commit"] == snaps["tiny-vit-b"].name
    assert source["revision"] == "main" and source["subfolder"] in ("batchtopk_2x_k4", "batchtopk_4x_k8")
    assert source["files"]["sae.pt"] == sha256_file(snaps["tiny-vit-b"] / source["subfolder"] / "sae.pt")
    index = json.loads((root / "results" / "saes.json").read_text())["saes"]
    assert all(s["source"]["commit"] in (snaps["tiny-vit-a"].name, snaps["tiny-vit-b"].name) for s in index)
    ev = index[0]["eval"]
    rec = json.loads((root / ev / "m2.json").read_text())
    assert rec["inputs"]["sae_provenance"]["repo"] in REPOS.values()
    assert (root / "report" / "index.html").is_file()
    # nothing to redo
    plan, summary = run_study(cfg)
    assert summary is not None and summary.ran == []


def test_release_yaml_plans_sixty_evaluations_and_no_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             ) -> None:
    for var in ("IMAGENET", "INAT", "CUB", "DTD", "ADE20K"):
        (tmp_path / var / "val").mkdir(parents=True)
        monkeypatch.setenv(var, str(tmp_path / var))
    study = Path(__file__).resolve().parents[2] / "studies" / "release.yaml"
    res = CliRunner().invoke(app,
                             ["study", "run", str(study), "--dry-run", "--set", f"out_dir={tmp_path / 'o'}"])
    assert res.exit_code == 0, res.output
    assert "checkpoint: 0/60" in res.output and "eval: 0/60" in res.output and "train:" not in res.output
    assert "visaebench/clip-vitb16-saes:batchtopk_32x_k256" in res.output


def test_checkpoint_of_another_backbone_is_refused(tmp_path: Path) -> None:
    from visae.sae.checkpoint import save_sae
    from visae.sae.registry import make_sae
    from visae.study.config import load_study_config
    from visae.study.plan import plan_study

    save_sae(make_sae("topk", D, d_sae=2 * D, k=4), tmp_path / "mine" / "topk_2x_k4",
             provenance={"backbone": "tiny-vit-b", "layer": 1})
    study = {**STUDY, "saes": [{"name": "mine", "checkpoints": [
        {"backbone": "tiny-vit-a", "path": str(tmp_path / "mine")}]}]}
    with pytest.raises(ConfigError, match=r"saes\[mine\].*trained on backbone 'tiny-vit-b'.*'tiny-vit-a'"):
        plan_study(load_study_config(_write(tmp_path / "s", study)))
    release = {**STUDY, "saes": [{"name": "r", "checkpoints": "release"}]}
    with pytest.raises(ConfigError, match="no SAEs for tiny-vit-a, tiny-vit-b"):
        load_study_config(_write(tmp_path / "r", release))
    bad = {**STUDY, "saes": [{"name": "x", "checkpoints": "release", "expansions": [8]}]}
    with pytest.raises(ConfigError, match="trains nothing"):
        load_study_config(_write(tmp_path / "x", bad))
