"""Test helpers: a local Hugging Face hub cache, written in the layout ``huggingface_hub`` reads offline.

Layout (``$HF_HOME/hub`` = ``HF_HUB_CACHE``)::

    models--<org>--<name>/
        blobs/<sha256>                       file contents, one per distinct file
        refs/<revision>                      the commit hash the revision points to (no newline)
        snapshots/<commit>/<path>            relative symlinks into ../blobs

With ``HF_HUB_OFFLINE=1`` the hub client (``hf_hub_download``, ``snapshot_download``, timm's
pretrained loader) resolves a revision through ``refs/`` and reads the snapshot, exactly as it reads a
cache that a real download filled.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from visae.errors import ConfigError


def hub_cache_dir(hf_home: Path | str) -> Path:
    """``HF_HUB_CACHE`` for an ``HF_HOME``: ``<hf_home>/hub``."""
    return Path(hf_home) / "hub"


def use_offline_hub(hf_home: Path | str, monkeypatch: Any) -> Path:
    """Point the hub client at ``hf_home`` (env vars for subprocesses and the loaded module's constants),
    offline; return the hub cache folder. ``monkeypatch`` is pytest's fixture (undone after the test)."""
    import huggingface_hub.constants as hc

    cache = hub_cache_dir(hf_home)
    cache.mkdir(parents=True, exist_ok=True)
    for key, value in {"HF_HOME": str(hf_home), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(hc, "HF_HOME", str(hf_home))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    return cache


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_hub_repo(cache_dir: Path | str, repo_id: str, files: Mapping[str, bytes | Path],
                   revision: str = "main", repo_type: str = "model") -> Path:
    """Put ``files`` (repo path → bytes, or a local file that is moved in) into the hub cache as one commit
    of ``repo_id`` that ``revision`` points to; return the snapshot folder. A second call adds a commit."""
    if repo_id.count("/") != 1:
        raise ConfigError(f"repo_id {repo_id!r}: expected 'org/name'")
    repo_dir = Path(cache_dir) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    blobs = repo_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    hashes: dict[str, str] = {}
    for rel, content in sorted(files.items()):
        if isinstance(content, bytes):
            digest = hashlib.sha256(content).hexdigest()
            (blobs / digest).write_bytes(content)
        else:
            digest = _sha256(Path(content))
            shutil.move(str(content), blobs / digest)
        hashes[rel] = digest
    commit = hashlib.sha1(repr(sorted(hashes.items())).encode()).hexdigest()
    snapshot = repo_dir / "snapshots" / commit
    for rel, digest in hashes.items():
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blobs / digest, link.parent))
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    return snapshot


# --- timm backbones -------------------------------------------------------------------------------------
def timm_hub_location(timm_name: str) -> tuple[str, str]:
    """``(repo_id, file)`` that timm reads a pretrained tag's weights from on the hub: its pretrained
    cfg's ``hf_hub_id`` and the safetensors file timm tries first (``model.safetensors`` for the default
    ``pytorch_model.bin``; ``open_clip_model.safetensors`` for ``open_clip_pytorch_model.bin``)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    if cfg is None or not cfg.hf_hub_id:
        raise ConfigError(f"timm model {timm_name!r} has no hub weights (no hf_hub_id in its pretrained cfg)")
    wanted = cfg.hf_hub_filename or "pytorch_model.bin"
    if wanted.endswith(".safetensors"):
        return cfg.hf_hub_id, wanted
    return cfg.hf_hub_id, "model.safetensors" if wanted == "pytorch_model.bin" else wanted.replace(
        "pytorch_model.bin", "model.safetensors")


def write_timm_weights(cache_dir: Path | str, timm_name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random weights of ``timm_name`` in the hub file's shapes (the model at its pretrained cfg's
    native size, e.g. 518 px for DINOv2), stored where timm looks; return the state dict written."""
    import tempfile

    import timm
    from safetensors.torch import save_file

    repo_id, filename = timm_hub_location(timm_name)
    with torch.device("meta"):  # shapes only: no initialisation cost
        shapes = {k: (tuple(v.shape), v.dtype) for k, v in timm.create_model(timm_name, pretrained=False)
                  .state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    state = {k: (torch.randn(shape, generator=g) * 0.02).to(dtype) for k, (shape, dtype) in shapes.items()}
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        path = Path(tmp) / filename
        save_file(state, str(path))
        write_hub_repo(cache_dir, repo_id, {filename: path})
    return state


# --- SAE repos in the paper authors' layout -------------------------------------------------------------
def authors_config_name(expansion: int, k: int) -> str:
    """The authors' subfolder name of one configuration: ``batchtopk_16x_k128``."""
    return f"batchtopk_{expansion}x_k{k}"


def authors_sae_files(d_in: int, expansion: int, k: int, seed: int = 0, batch_size: int = 4096,
                      ) -> dict[str, bytes]:
    """One configuration's files as the authors' release holds them: ``sae.pt`` (an overcomplete
    BatchTopKSAE state dict, with ``_running_threshold``) and ``config.yaml`` (``threshold``, ``top_k``
    for the whole batch, ``batch_size``). Random weights, seeded."""
    import io

    import yaml

    d_sae = expansion * d_in
    g = torch.Generator().manual_seed(seed)
    threshold = 0.05 + 0.01 * (seed % 7)
    state = {
        "encoder.final_block.0.weight": torch.randn(d_sae, d_in, generator=g) / d_in ** 0.5,
        "encoder.final_block.0.bias": torch.randn(d_sae, generator=g) * 0.01,
        "dictionary._weights": torch.randn(d_sae, d_in, generator=g),
        "dictionary.multiplier": torch.tensor(0.0),
        "_running_threshold": torch.tensor(threshold),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    cfg = {"threshold": threshold, "top_k": k * batch_size, "batch_size": batch_size,
           "nb_concepts": d_sae, "input_shape": d_in}
    return {"sae.pt": buf.getvalue(), "config.yaml": yaml.safe_dump(cfg).encode()}


def write_authors_repo(cache_dir: Path | str, repo_id: str, configs: Sequence[tuple[int, int]], d_in: int,
                       revision: str = "main", seed: int = 0, extra: Mapping[str, bytes] | None = None,
                       ) -> Path:
    """A repo in the authors' layout (one subfolder per ``(expansion, k)``) in the hub cache; return its
    snapshot folder. ``extra`` adds files (e.g. ``README.md``) at the repo root."""
    files: dict[str, bytes | Path] = dict(extra or {})
    for i, (expansion, k) in enumerate(configs):
        sub = authors_config_name(expansion, k)
        for name, content in authors_sae_files(d_in, expansion, k, seed=seed + i).items():
            files[f"{sub}/{name}"] = content
    return write_hub_repo(cache_dir, repo_id, files, revision=revision)


__all__ = ["authors_config_name", "authors_sae_files", "hub_cache_dir", "timm_hub_location",
           "use_offline_hub",
           "write_authors_repo", "write_hub_repo", "write_timm_weights"]
