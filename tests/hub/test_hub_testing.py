"""The test helper writes a cache that huggingface_hub itself reads offline (refs, snapshots, blobs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from visae.hub_testing import timm_hub_location, write_authors_repo, write_hub_repo


def test_hub_client_reads_the_written_cache(hub_cache: Path) -> None:
    from huggingface_hub import hf_hub_download, scan_cache_dir, snapshot_download, try_to_load_from_cache

    snap = write_hub_repo(hub_cache, "org/repo", {"a/x.txt": b"hello", "b.txt": b"world"})
    assert (hub_cache / "models--org--repo" / "refs" / "main").read_text() == snap.name
    assert Path(hf_hub_download("org/repo", "a/x.txt")).read_bytes() == b"hello"
    assert try_to_load_from_cache("org/repo", "b.txt") == str(snap / "b.txt")
    assert Path(snapshot_download("org/repo", allow_patterns=["a/*"])) == snap
    info = scan_cache_dir(hub_cache)
    assert info.warnings == []
    (repo,) = info.repos
    assert repo.repo_id == "org/repo" and {f.file_name
                                           for f in next(iter(repo.revisions)).files} == {"x.txt", "b.txt"}
    # a second commit under another revision leaves main alone
    snap2 = write_hub_repo(hub_cache, "org/repo", {"b.txt": b"v2"}, revision="v2")
    assert Path(hf_hub_download("org/repo", "b.txt", revision="v2")).read_bytes() == b"v2"
    assert Path(hf_hub_download("org/repo", "b.txt")).read_bytes() == b"world"
    assert snap2 != snap


def test_missing_repo_or_file_is_the_hub_clients_offline_error(hub_cache: Path) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    write_authors_repo(hub_cache, "visaebench/x-saes", [(2, 4)], d_in=8)
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download("visaebench/x-saes", "batchtopk_2x_k4/missing.pt")
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download("visaebench/nope", "sae.pt")


def test_timm_hub_location_is_what_timm_asks_for() -> None:
    # timm reads <hf_hub_id>/model.safetensors first (safe alternative of pytorch_model.bin)
    assert timm_hub_location("vit_base_patch16_clip_224.openai") == ("timm/vit_base_patch16_clip_224.openai",
                                                                    "model.safetensors")
    assert timm_hub_location("vit_base_patch14_dinov2.lvd142m") == ("timm/vit_base_patch14_dinov2.lvd142m",
                                                                   "model.safetensors")
