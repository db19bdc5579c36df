"""Existing checkpoints named by a study block: expansion to single references, and the backbone check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from visae.errors import ConfigError
from visae.hub_testing import write_authors_repo
from visae.sae.checkpoint import save_sae
from visae.sae.existing import CheckpointSpec, check_backbone, checkpoint_backbone, expand, release_specs
from visae.sae.hub import RELEASE_REPOS, locate_sae, parse_sae_ref
from visae.sae.registry import make_sae


def test_release_is_sixty_references_without_the_hub() -> None:
    items = [e for spec in release_specs() for e in expand(spec)]
    assert len(items) == 60 and len({e.ref for e in items}) == 60
    first = items[0]
    assert (first.backbone, first.name, first.ref) == ("dinov2-b14", "batchtopk_8x_k64",
                                                       "visaebench/dinov2-vitb14-saes:batchtopk_8x_k64")
    assert {e.backbone for e in items} == set(RELEASE_REPOS)
    with pytest.raises(ConfigError, match="no SAEs for efficientnet"):
        release_specs(["efficientnet-lite0"])


def test_spec_needs_exactly_one_location() -> None:
    with pytest.raises(ValueError, match="exactly one of repo, path, ref"):
        CheckpointSpec(backbone="clip-b16", repo="a/b", path="x")
    with pytest.raises(ValueError, match="exactly one"):
        CheckpointSpec(backbone="clip-b16")


def _ours(folder: Path, backbone: str) -> Path:
    sae = make_sae("topk", 8, d_sae=16, k=2)
    return save_sae(sae, folder, provenance={"backbone": backbone, "layer": 11})


def test_local_folder_and_ref(tmp_path: Path, hub_cache: Path) -> None:
    _ours(tmp_path / "grid" / "topk_2x_k2", "clip-b16")
    _ours(tmp_path / "grid" / "topk_2x_k4", "clip-b16")
    items = expand(CheckpointSpec(backbone="clip-b16", path=str(tmp_path / "grid")))
    assert [e.name for e in items] == ["topk_2x_k2", "topk_2x_k4"]
    assert items[0].ref == str(tmp_path / "grid" / "topk_2x_k2")
    write_authors_repo(hub_cache, "me/saes", [(2, 4), (4, 8)], d_in=8)
    items = expand(CheckpointSpec(backbone="clip-b16", repo="me/saes"))  # listed from the offline cache
    assert [e.ref for e in items] == ["me/saes:batchtopk_2x_k4", "me/saes:batchtopk_4x_k8"]
    (one,) = expand(CheckpointSpec(backbone="clip-b16", ref="me/saes:batchtopk_4x_k8@main"))
    assert one.name == "batchtopk_4x_k8" and one.ref == "me/saes:batchtopk_4x_k8@main"


def test_backbone_mismatch_is_refused_naming_both(tmp_path: Path, hub_cache: Path) -> None:
    path = _ours(tmp_path / "s", "clip-b16")
    (item,) = expand(CheckpointSpec(backbone="dinov2-b14", path=str(path)))
    with pytest.raises(ConfigError, match=r"trained on backbone 'clip-b16', but the block gives it backbone "
                                          r"'dinov2-b14'"):
        check_backbone(item, path, "saes[release]")
    (ok,) = expand(CheckpointSpec(backbone="vit_base_patch16_clip_224.openai", path=str(path)))
    assert check_backbone(ok, path) == "clip-b16"  # a timm name and its short name are one backbone
    # the authors' repos carry their backbone in the repo name
    write_authors_repo(hub_cache, RELEASE_REPOS["mae-b16"], [(8, 64)], d_in=8)
    ref = f"{RELEASE_REPOS['mae-b16']}:batchtopk_8x_k64"
    located = locate_sae(ref)
    assert checkpoint_backbone(located.path, parse_sae_ref(ref)) == "mae-b16"
    (wrong,) = expand(CheckpointSpec(backbone="clip-b16", ref=ref))
    with pytest.raises(ConfigError, match=r"'mae-b16'.*'clip-b16'"):
        check_backbone(wrong, located.path)
    # a checkpoint that does not say is accepted (nothing to compare)
    torch.save({}, tmp_path / "x.pt")
    (unknown,) = expand(CheckpointSpec(backbone="clip-b16", path=str(tmp_path / "x.pt")))
    assert check_backbone(unknown, tmp_path / "x.pt") is None
