"""Study config and planning: grid expansion, content ids, grouping, placeholders, path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from visae.errors import ConfigError
from visae.study.config import check_inputs_exist, load_study_config
from visae.study.plan import plan_study

BASE = {
    "name": "t",
    "out_dir": "out",
    "backbones": ["bb-a", {"name": "bb-b", "image_size": 112}],
    "layers": [11],
    "saes": [
        {"name": "main", "family": "batchtopk", "expansions": [2, 4], "ks": [8, 16]},
        {"name": "jumprelu", "family": "jumprelu", "expansions": [4], "ks": [8], "backbones": ["bb-a"]},
        {"name": "layer-ablation", "family": "batchtopk", "expansions": [2], "ks": [8], "layers": [3],
         "backbones": ["bb-b"]},
    ],
    "data": {"train": {"spec": "offline:digits", "split": "train"},
             "eval": {"spec": "offline:digits", "split": "test"},
             "ood": {"faces": {"spec": "offline:faces"}}},
    "metrics": ["m1", "m2", "m6"],
}


def write_yaml(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_plan_counts_and_grouping(tmp_path: Path) -> None:
    cfg = load_study_config(write_yaml(tmp_path, BASE))
    plan = plan_study(cfg)
    kinds = [j.kind for j in plan.jobs]
    # bb-a L11, bb-b L11, bb-b L3 → 3 pairs × (train, eval, faces) caches
    assert kinds.count("cache") == 9
    # bb-a: batchtopk group + jumprelu group; bb-b L11: batchtopk; bb-b L3: batchtopk
    assert kinds.count("train") == 4
    assert kinds.count("eval") == 4 + 1 + 4 + 1
    assert kinds.count("raw") == 3
    train_a = [j for j in plan.of_kind("train") if j.meta["backbone"] == "bb-a"
               and j.params["family"] == "batchtopk"]
    assert len(train_a[0].outputs) == 4  # every SAE of the group trains in one pass
    # dependency order: every dep appears before the job
    seen: set[str] = set()
    for job in plan.jobs:
        assert set(job.deps) <= seen
        seen.add(job.id)
    assert plan.jobs[-1].kind == "report"


def test_ids_are_stable_and_content_addressed(tmp_path: Path) -> None:
    a = plan_study(load_study_config(write_yaml(tmp_path, BASE)))
    b = plan_study(load_study_config(write_yaml(tmp_path, BASE)))
    assert [j.id for j in a.jobs] == [j.id for j in b.jobs]
    # Growing the grid keeps the old SAEs' ids (so they are not retrained) and changes the group job.
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["saes"][0]["ks"] = [8, 16, 32]
    grown = plan_study(load_study_config(write_yaml(tmp_path, data)))
    old_saes = {o for j in a.of_kind("train") for o in j.outputs}
    new_saes = {o for j in grown.of_kind("train") for o in j.outputs}
    assert old_saes < new_saes
    assert len(new_saes - old_saes) == 4  # K=32 × 2 widths × 2 backbones at layer 11
    # a changed training setting changes every SAE id
    data2 = yaml.safe_load(yaml.safe_dump(BASE))
    data2["train"] = {"lr": 0.01}
    other = plan_study(load_study_config(write_yaml(tmp_path, data2)))
    assert not ({o for j in other.of_kind("train") for o in j.outputs} & old_saes)


def test_paths_resolve_against_yaml_and_placeholders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["data"]["train"] = {"spec": "folder:${VISAE_T_DATA}/train"}
    data["data"]["eval"] = {"spec": "folder:rel/val"}
    sub = tmp_path / "sub"
    sub.mkdir()
    path = sub / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="VISAE_T_DATA"):
        load_study_config(path)
    monkeypatch.setenv("VISAE_T_DATA", str(tmp_path / "imnet"))
    cfg = load_study_config(path)
    assert cfg.out_dir == (sub / "out").resolve()
    assert cfg.data.eval.spec == f"folder:{(sub / 'rel' / 'val').resolve()}"
    with pytest.raises(ConfigError, match=r"data.train.spec: .*imnet/train does not exist"):
        check_inputs_exist(cfg)
    (tmp_path / "imnet" / "train").mkdir(parents=True)
    (sub / "rel" / "val").mkdir(parents=True)
    check_inputs_exist(cfg)


def test_overrides_and_errors(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, BASE)
    cfg = load_study_config(path, ["layers=[5]", "device=cpu"])
    assert cfg.layers == [5] and cfg.device == "cpu"
    with pytest.raises(ConfigError, match="unknown key"):
        load_study_config(path, ["bogus=1"])
    bad = yaml.safe_load(yaml.safe_dump(BASE))
    bad["saes"][1]["backbones"] = ["nope"]
    with pytest.raises(ConfigError, match="nope"):
        load_study_config(write_yaml(tmp_path, bad))


@pytest.mark.parametrize("name", ["paper.yaml", "demo.yaml"])
def test_presets_parse(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("IMAGENET", "INAT", "CUB", "DTD", "ADE20K"):
        monkeypatch.setenv(var, f"/nonexistent/{var.lower()}")
    root = Path(__file__).resolve().parents[2]
    cfg = load_study_config(root / "studies" / name)
    plan = plan_study(cfg)
    assert plan.of_kind("report")
    if name == "paper.yaml":
        main = [s for j in plan.of_kind("train") if j.meta["layer"] == 11 for s in j.params["saes"]
                if s["family"] == "batchtopk"]
        assert len(main) == 60
        with pytest.raises(ConfigError, match="does not exist"):
            check_inputs_exist(cfg)
        # training caches keep 1 seeded patch per image, the others every patch
        caches = plan.of_kind("cache")
        assert {j.params["settings"].get("tokens_per_image") for j in caches
                if j.meta["role"] == "train"} == {1}
        assert all("tokens_per_image" not in j.params["settings"] for j in caches
                   if j.meta["role"] != "train")


def test_ood_test_split_gets_its_own_cache_and_reaches_m6(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["data"]["ood"]["faces"] = {"spec": "offline:faces", "split": "train", "test_split": "test"}
    cfg = load_study_config(write_yaml(tmp_path, data))
    plan = plan_study(cfg)
    roles = [j.meta["role"] for j in plan.of_kind("cache")]
    assert roles.count("faces@test") == 3 and roles.count("faces") == 3
    test_cache = next(j for j in plan.of_kind("cache") if j.meta["role"] == "faces@test")
    assert test_cache.params["source"]["split"] == "test"
    ev = plan.of_kind("eval")[0]
    assert set(ev.params["ood_test"]) == {"faces"}
    from visae.study.stages import eval as eval_stage

    monkeypatch.setattr(eval_stage, "cache_path", lambda root, out: root / out)
    m6 = eval_stage.study_metric_extras(eval_stage.Params.model_validate(ev.params),
                                        tmp_path)["m6"]["datasets"][0]
    assert m6["name"] == "faces" and m6["test_cache"].endswith(ev.params["ood_test"]["faces"])


def test_only_parameters_a_job_reads_enter_its_id(tmp_path: Path) -> None:
    def ids(**changes: object) -> dict[str, str]:
        plan = plan_study(load_study_config(write_yaml(tmp_path, {**BASE, **changes})))
        return {j.label: j.id for j in plan.jobs}

    base = ids()
    assert ids(device="cuda") == base  # the device is the executor's business, not a job parameter
    labelled = ids(backbones=[{"name": "bb-a", "label": "A"}, {"name": "bb-b", "image_size": 112}])
    assert {k for k in base if labelled[k] != base[k]} == {"report"}  # labels are display only
    assert {k for k in base if ids(browser_features=3)[k] != base[k]} == {"feature views", "report"}
    hyp = [{"id": "HX", "metric": "m1", "task": "task:x:raw", "threshold": 0.5}]
    assert {k for k in base if ids(hypotheses=hyp)[k] != base[k]} == {"analysis", "report"}


def test_fixed_name_outputs_are_done_only_for_their_own_job(tmp_path: Path) -> None:
    from visae.study.protocol import job_done, write_done

    plan = plan_study(load_study_config(write_yaml(tmp_path, BASE)))
    train = plan.of_kind("train")[0]
    for out in train.outputs:  # SAEs trained by an earlier job (another grid): still done
        write_done(tmp_path / out, {"job_id": "an-earlier-train-job", "kind": "sae"})
    assert job_done(train, tmp_path)
    for kind in ("collect", "analysis", "features", "report"):
        job = plan.of_kind(kind)[0]
        write_done(tmp_path / job.outputs[0], {"job_id": "an-earlier-" + kind})
        assert not job_done(job, tmp_path), kind  # results/ of another plan must be redone
        write_done(tmp_path / job.outputs[0], {"job_id": job.id})
        assert job_done(job, tmp_path), kind


def test_seeds_train_in_the_same_job_and_leave_other_ids_alone(tmp_path: Path) -> None:
    seeded = {**BASE, "saes": [{**BASE["saes"][0], "seeds": [1, 2, 3]}, *BASE["saes"][1:]]}
    plan = plan_study(load_study_config(write_yaml(tmp_path, seeded)))
    train_a = [j for j in plan.of_kind("train") if j.meta["backbone"] == "bb-a"
               and j.params["family"] == "batchtopk"]
    members = train_a[0].params["saes"]
    # 4 configs × 3 seeds, one pass
    assert len(members) == 12 and sorted({m["seed"] for m in members}) == [1, 2, 3]
    assert len({m["sae_id"] for m in members}) == 12
    base = plan_study(load_study_config(write_yaml(tmp_path, BASE)))
    jumprelu = {j.id for j in base.of_kind("train") if j.params["family"] == "jumprelu"}
    assert jumprelu <= {j.id for j in plan.of_kind("train")}  # blocks without seeds keep their ids
    bad = {**BASE, "saes": [{**BASE["saes"][0], "seeds": [1, 1]}]}
    with pytest.raises(ConfigError, match="seeds"):
        load_study_config(write_yaml(tmp_path, bad))
