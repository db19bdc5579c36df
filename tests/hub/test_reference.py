"""Reference folders (``reference.json``): load what they point at, pinned to the commit; refuse changed
files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from visae.errors import CheckpointError
from visae.hub_testing import authors_sae_files, write_authors_repo, write_hub_repo
from visae.sae.checkpoint import load_sae, load_sae_with_provenance, sae_fingerprint, save_sae
from visae.sae.hub import locate_sae, write_reference
from visae.sae.registry import make_sae

REPO = "me/x-saes"


def test_hub_reference_is_pinned_to_the_commit(tmp_path: Path, hub_cache: Path) -> None:
    snap = write_authors_repo(hub_cache, REPO, [(2, 4)], d_in=8)
    write_reference(tmp_path / "ref", locate_sae(f"{REPO}:batchtopk_2x_k4"))
    data = json.loads((tmp_path / "ref" / "reference.json").read_text())
    assert data["ref"] == f"{REPO}:batchtopk_2x_k4@{snap.name}"
    before = load_sae(tmp_path / "ref")
    assert sae_fingerprint(before) == sae_fingerprint(load_sae(f"{REPO}:batchtopk_2x_k4"))
    # main moves on: the reference still loads the commit it recorded
    files = {f"batchtopk_2x_k4/{k}": v for k, v in authors_sae_files(8, 2, 4, seed=5).items()}
    write_hub_repo(hub_cache, REPO, files)
    assert sae_fingerprint(load_sae(tmp_path / "ref")) == sae_fingerprint(before)
    assert sae_fingerprint(load_sae(f"{REPO}:batchtopk_2x_k4")) != sae_fingerprint(before)
    _, prov = load_sae_with_provenance(tmp_path / "ref")
    assert prov["repo"] == REPO and prov["commit"] == snap.name and prov["reference"] == str(tmp_path / "ref")
    assert set(prov["files"]) == {"sae.pt", "config.yaml"}


def test_local_reference_refuses_changed_files(tmp_path: Path) -> None:
    sae = make_sae("topk", 8, d_sae=16, k=2)
    save_sae(sae, tmp_path / "s")
    write_reference(tmp_path / "ref", locate_sae(tmp_path / "s"))
    torch.testing.assert_close(load_sae(tmp_path / "ref").W_enc, sae.W_enc)
    with torch.no_grad():
        sae.W_enc.add_(1.0)
    save_sae(sae, tmp_path / "s")
    with pytest.raises(CheckpointError, match=r"not the one recorded \(changed: model.safetensors"):
        load_sae(tmp_path / "ref")
