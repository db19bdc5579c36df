"""studies/demo.yaml: enough backbones and tasks that every cross-backbone section of its report computes."""

from __future__ import annotations

from pathlib import Path

from visae.backbones.registry import control_of
from visae.study.config import load_study_config
from visae.study.plan import plan_study

DEMO = Path(__file__).resolve().parents[2] / "studies" / "demo.yaml"


def test_demo_has_real_backbones_and_both_controls() -> None:
    cfg = load_study_config(DEMO)
    names = [b.name for b in cfg.backbones]
    controls = {n: control_of(n) for n in names}
    assert len(names) >= 4
    assert any(n.startswith("shuffled:") for n in names) and "random-vit-s14" in names
    assert sum(c is None for c in controls.values()) >= 2  # two real backbones: DINOv2 and EfficientNet-Lite0
    assert "efficientnet-lite0" in names
    plan = plan_study(cfg)  # every backbone has the same 7×7 grid: the M1 null is the same −1/48 for all
    sizes = {b.name: b.image_size for b in cfg.backbones}
    assert sizes["efficientnet-lite0"] // 32 == sizes["dinov2-s14-offline"] // 14 == 7
    main = {j.meta["backbone"] for j in plan.of_kind("train") if j.meta["layer"] == 11}
    assert main == set(names)


def test_demo_hypotheses_and_consistency_have_their_inputs() -> None:
    cfg = load_study_config(DEMO)
    plan = plan_study(cfg)
    tasks = {t.name: t.kind for t in cfg.tasks}
    produced = set()
    for t in cfg.tasks:
        name = t.config.get("name", t.name)
        produced |= {f"task:{name}_{m}:raw"
                     for m in ("r1", "acc", "miou")} | {f"task:{name}_sparse_auc128:codes"}
    assert [h.id for h in cfg.hypotheses] == ["H1", "H2", "H3", "H4"]
    for h in cfg.hypotheses:
        assert h.task in produced, h.task
        assert h.metric in cfg.metrics
    assert tasks["segmentation"] == "segmentation"
    task_jobs = {(j.meta["task"], j.meta["backbone"]) for j in plan.of_kind("task")}
    assert all((t, b.name) in task_jobs for t in tasks for b in cfg.backbones)
    families = {}
    for j in plan.of_kind("train"):
        if j.meta["layer"] == 11:
            families.setdefault(j.params["family"], set()).add(j.meta["backbone"])
    assert len(families) >= 2 and all(len(b) >= 3 for b in families.values())  # Table 9 needs ≥ 3 backbones
