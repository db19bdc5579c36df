"""studies/ablations.yaml plans every open question; studies/paper.yaml's '#+' switches make a valid study."""

from __future__ import annotations

from pathlib import Path

import pytest

from visae.study.config import load_study_config
from visae.study.plan import plan_study

ROOT = Path(__file__).resolve().parents[2]


def test_ablations_preset_plans_every_question() -> None:
    cfg = load_study_config(ROOT / "studies" / "ablations.yaml")
    plan = plan_study(cfg)
    saes = [s for j in plan.of_kind("train") for s in j.params["saes"]]
    main = [s for s in saes if s["grid"] == "main"]
    assert len(main) == 9 and {s["seed"] for s in main} == {0, 1, 2}  # stability: 3 seeds × 3 backbones
    whitened = [s["train"].get("whiten") for s in saes if s["grid"].startswith("whiten")]
    assert sorted(whitened) == ["pca"] * 4 + ["zca"] * 4  # twins of seed 0 on every image backbone
    assert [s["grid"] for s in saes].count("control") == 1  # the shuffled spatial null: one SAE
    synth = [s for s in saes if s["grid"].startswith("synth-")]
    assert {s["backbone"] for s in synth} == {"synth:spatial", "synth:null", "synth:easy?d=16"}
    assert all(s["layer"] == 0 for s in synth)
    caches = {(j.params["backbone"]["name"], j.params["source"]["spec"]) for j in plan.of_kind("cache")}
    assert all(spec == "synth" for name, spec in caches if name.startswith("synth:"))
    ev = plan.of_kind("eval")[0]
    assert {"m5", "m5d"} <= set(ev.params["metrics"])
    assert ev.params["metric_configs"]["m1"]["grid"] == "7x7"
    assert plan.of_kind("raw")[0].params["config"]["grid"] == "7x7"
    assert plan.of_kind("collect")[0].params["stability"] == {"threshold": 0.7}


def test_paper_switches_uncommented_make_a_valid_study(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("IMAGENET", "INAT", "CUB", "DTD", "ADE20K"):
        monkeypatch.setenv(var, f"/nonexistent/{var.lower()}")
    lines = (ROOT / "studies" / "paper.yaml").read_text().splitlines()
    switched = [line[3:] if line.startswith("#+ ") else line for line in lines
                if line not in ("metrics: [m1, m2, m3, m4, m5, m6, m7]", "metric_configs: {}")]
    assert sum(line.startswith("#+ ") for line in lines) > 20
    path = tmp_path / "paper-ablations.yaml"
    path.write_text("\n".join(switched).replace("out_dir: paper-study", f"out_dir: {tmp_path / 'out'}"))
    cfg = load_study_config(path)
    assert "m5d" in cfg.metrics and cfg.metric_configs["m1"]["grid"] == "14x14"
    plan = plan_study(cfg)
    seeds = [s for j in plan.of_kind("train") for s in j.params["saes"] if s["grid"] == "seeds"]
    assert len(seeds) == 5 * 4 * 3
    assert plan.of_kind("collect")[0].params["stability"]["max_atoms"] == 4096
