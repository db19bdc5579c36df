"""Where an SAE checkpoint comes from: a local folder or a Hugging Face hub repo, its subfolder, a revision.

A reference is written ``REPO[:SUBFOLDER][@REVISION]`` (``visaebench/clip-vitb16-saes:batchtopk_16x_k128``)
or as a local path (``runs/grid/batchtopk_8x_k64``, ``runs/grid:batchtopk_8x_k64``). Hub repos go through
``huggingface_hub``: ``snapshot_download`` fetches only the subfolder asked for, and with
``HF_HUB_OFFLINE=1`` the same call reads the local cache. Every resolution records its provenance:
repo, requested revision, the commit it resolved to, and the sha256 of each checkpoint file.

The paper authors' release is one repo per backbone (:data:`RELEASE_REPOS`), each holding twelve
configurations ``batchtopk_{8,16,32}x_k{64,128,192,256}`` (:data:`RELEASE_CONFIGS`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visae.errors import CheckpointError, ConfigError
from visae.io import sha256_file

RELEASE_REPOS: dict[str, str] = {
    "dinov2-b14": "visaebench/dinov2-vitb14-saes",
    "clip-b16": "visaebench/clip-vitb16-saes",
    "siglip-b16": "visaebench/siglip-vitb16-saes",
    "mae-b16": "visaebench/mae-vitb16-saes",
    "deit-b16": "visaebench/deit-vitb16-saes",
}
"""Backbone short name → the authors' hub repo of its SAEs (paper §3, one repo per backbone)."""

RELEASE_EXPANSIONS = (8, 16, 32)
RELEASE_KS = (64, 128, 192, 256)
RELEASE_CONFIGS: tuple[str, ...] = tuple(f"batchtopk_{e}x_k{k}" for e in RELEASE_EXPANSIONS
                                         for k in RELEASE_KS)
"""The twelve configurations of each release repo (expansion × K)."""

OURS = ("model.safetensors", "config.yaml")


def checkpoint_markers() -> list[tuple[str, ...]]:
    """File sets that make a folder an SAE checkpoint: ours, then each registered format's
    (:data:`visae.sae.formats.CHECKPOINT_FORMATS`: SAELens, saev, the authors' release, plugins)."""
    from visae.sae.formats import CHECKPOINT_FORMATS

    return list(dict.fromkeys([OURS, *(f.files for f in CHECKPOINT_FORMATS.values())]))

def local_configurations(folder: Path) -> list[str]:
    """Names of the sub-folders of ``folder`` that hold an SAE checkpoint (a 'visae train' grid's SAEs)."""
    if not folder.is_dir():
        return []
    markers = checkpoint_markers()
    return sorted(p.name for p in folder.iterdir()
                  if p.is_dir() and any(all((p / name).is_file() for name in m) for m in markers))


def describe_grid(folder: Path) -> str:
    """``a folder of N SAEs: pick one with --subfolder NAME (…): a, b`` ('' when ``folder`` is no grid)."""
    names = local_configurations(folder)
    if not names:
        return ""
    shown = ", ".join(names[:20]) + (f" … ({len(names)} in all)" if len(names) > 20 else "")
    return (f"a folder of {len(names)} SAE(s); pick one with --subfolder NAME or {folder}/NAME "
            f"(subfolder=NAME in Python): {shown}")


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_REF = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<sub>[^@:]+))?(?:@(?P<rev>[^@:]+))?")


@dataclass(frozen=True)
class SAERef:
    """A checkpoint's location: a local path or a hub ``repo``, an optional ``subfolder`` and ``revision``."""

    target: str
    subfolder: str | None = None
    revision: str | None = None
    hub: bool = False

    def __str__(self) -> str:
        sub = f":{self.subfolder}" if self.subfolder else ""
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.target}{sub}{rev}"


def _merge(what: str, given: str | None, option: str | None, text: str) -> str | None:
    if given and option and given.strip("/") != option.strip("/"):
        raise ConfigError(f"SAE {text!r}: names {what} {given!r}, but --{what} says {option!r}; give one")
    value = given or option
    return value.strip("/") if value else None


def parse_sae_ref(text: str | Path, subfolder: str | None = None, revision: str | None = None) -> SAERef:
    """Parse ``REPO[:SUBFOLDER][@REVISION]`` or a local path (``PATH`` or ``PATH:SUBFOLDER``).

    An existing path is always local. ``subfolder``/``revision`` (the CLI options) may repeat what the
    text says, but not contradict it.
    """
    raw = str(text)
    if isinstance(text, Path) or Path(raw).exists():
        if revision:
            raise ConfigError(f"SAE {raw!r}: --revision applies to hub repos only; this is a local path")
        return SAERef(raw, _merge("subfolder", None, subfolder, raw))
    head, sep, tail = raw.rpartition(":")
    if sep and head and Path(head).exists() and "@" not in tail:
        if revision:
            raise ConfigError(f"SAE {raw!r}: --revision applies to hub repos only; {head!r} is a local path")
        return SAERef(head, _merge("subfolder", tail, subfolder, raw))
    m = _REF.fullmatch(raw)
    if m is None:
        raise CheckpointError(f"SAE {raw!r}: no such file or folder, and not a hub reference "
                              "(ORG/NAME[:SUBFOLDER][@REVISION], e.g. "
                              f"{RELEASE_REPOS['clip-b16']}:batchtopk_16x_k128)")
    return SAERef(m["repo"], _merge("subfolder", m["sub"], subfolder, raw),
                  _merge("revision", m["rev"], revision, raw), hub=True)


@dataclass(frozen=True)
class LocatedSAE:
    """A reference resolved to files on this machine: ``path`` is what the checkpoint readers open."""

    ref: SAERef
    path: Path
    provenance: dict[str, Any] = field(default_factory=dict)


def checkpoint_files(path: Path) -> list[Path]:
    """The files that make up the checkpoint at ``path`` (a folder or one file), in name order."""
    if path.is_file():
        extra = path.with_name("config.yaml")
        return sorted({path, *([extra] if extra.is_file() and path.suffix == ".pt" else [])})
    for marker in checkpoint_markers():
        if all((path / name).is_file() for name in marker):
            optional = [p for p in (path / "config.yaml", path / "config.json", path / "sparsity.safetensors")
                        if p.is_file()]
            return sorted({*(path / name for name in marker), *optional})
    return []


def file_hashes(path: Path) -> dict[str, str]:
    """``{file name: sha256}`` of the checkpoint files at ``path``."""
    return {p.name: sha256_file(p) for p in checkpoint_files(path)}


def configurations(files: list[str]) -> list[str]:
    """Checkpoint folders among repo file paths (``"."`` when the root itself is one), sorted."""
    by_dir: dict[str, set[str]] = {}
    for f in files:
        d, _, name = f.rpartition("/")
        by_dir.setdefault(d or ".", set()).add(name)
    markers = checkpoint_markers()
    found = [d for d, names in by_dir.items() if any(set(m) <= names for m in markers)]
    return sorted(found, key=_config_sort_key)


def _config_sort_key(name: str) -> tuple[Any, ...]:
    m = re.fullmatch(r"(\w+?)_(\d+)x_k(\d+)", name)
    return (0, m[1], int(m[2]), int(m[3])) if m else (1, name, 0, 0)


# --- hub ------------------------------------------------------------------------------------------------
def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _cached_repo(repo_id: str) -> Any:
    """The ``CachedRepoInfo`` of ``repo_id`` in the local hub cache, or None."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(_hub_cache())
    except (CacheNotFound, OSError):  # no cache folder yet, or unreadable: nothing cached
        return None
    return next((r for r in info.repos if r.repo_id == repo_id and r.repo_type == "model"), None)


def cached_repos() -> list[str]:
    """Model repos in the local hub cache that hold at least one SAE checkpoint."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(_hub_cache())
    except (CacheNotFound, OSError):
        return []
    out = []
    for repo in info.repos:
        files = [str(f.file_path.relative_to(rev.snapshot_path)) for rev in repo.revisions for f in rev.files]
        if repo.repo_type == "model" and configurations(files):
            out.append(repo.repo_id)
    return sorted(out)


def _cached_revision(repo_id: str, revision: str | None) -> Any:
    repo = _cached_repo(repo_id)
    if repo is None:
        return None
    wanted = revision or "main"
    for rev in repo.revisions:
        if wanted in rev.refs or rev.commit_hash.startswith(wanted):
            return rev
    return None


def list_configurations(repo_id: str, revision: str | None = None) -> list[str]:
    """The SAE configurations (subfolders) of a hub repo: from the hub, or from the local cache offline.

    Raises CheckpointError naming the repo when it does not exist (or is not cached, offline)."""
    if not _offline():
        try:
            from huggingface_hub import HfApi

            return configurations(HfApi().list_repo_files(repo_id, revision=revision))
        # any hub/network failure (httpx, HTTP, validation): the cache may still know it
        except Exception as e:
            online_error: Exception | None = e
    else:
        online_error = None
    rev = _cached_revision(repo_id, revision)
    if rev is None:
        raise CheckpointError(_missing_repo_message(repo_id, None, revision, online_error))
    return configurations([str(f.file_path.relative_to(rev.snapshot_path)) for f in rev.files])


def _where() -> str:
    return (f"in the local Hugging Face cache {_hub_cache()} (offline: HF_HUB_OFFLINE=1)" if _offline()
            else "on the Hugging Face Hub nor in the local cache")


def _missing_repo_message(repo_id: str, subfolder: str | None, revision: str | None,
                          error: Exception | None) -> str:
    sub = f", subfolder {subfolder!r}" if subfolder else ""
    rev = f" at revision {revision!r}" if revision else ""
    cause = (f" ({type(error).__name__}: {str(error).splitlines()[0][:160]})"
             if error is not None and not _offline() else "")
    cached = cached_repos()
    known = f"SAE repos cached here: {', '.join(cached)}" if cached else "no SAE repo is cached here"
    release = ", ".join(RELEASE_REPOS.values())
    return (f"hub repo {repo_id!r}{sub}: not found{rev} {_where()} (nor is it a local path){cause}; {known}; "
            f"the paper's release is "
            f"{release} (download one with network access, e.g. 'hf download {RELEASE_REPOS['clip-b16']}')")


def _missing_config_message(repo_id: str, subfolder: str, revision: str | None, existing: list[str]) -> str:
    rev = f" (revision {revision!r})" if revision else ""
    listed = ", ".join(c for c in existing) if existing else "none"
    where = "cached locally" if _offline() else "in the repo"
    return (f"hub repo {repo_id!r}{rev} has no configuration {subfolder!r}; configurations {where}: "
            f"{listed}; pass one with --subfolder or {repo_id}:<configuration> (list them with 'visae ls "
            f"{repo_id}')")


def _snapshot(ref: SAERef) -> Path:
    from huggingface_hub import snapshot_download

    patterns = [f"{ref.subfolder}/*"] if ref.subfolder else None
    try:
        return Path(snapshot_download(repo_id=ref.target, revision=ref.revision, allow_patterns=patterns))
    except Exception as e:  # the hub client's errors (HTTP, offline, validation) become one clear message
        if type(e).__name__ == "IncompleteSnapshotError":
            raise CheckpointError(f"hub repo {ref.target!r}, subfolder {ref.subfolder!r}: the local cache "
                                  f"holds only part of it and the hub cannot be reached ({e}); download it "
                                  "with network access") from e
        if type(e).__name__ == "RevisionNotFoundError":
            raise CheckpointError(f"hub repo {ref.target!r}: no revision {ref.revision!r}; give a branch, "
                                  "tag or commit that exists (default: main)") from e
        cached = _cached_repo(ref.target) if ref.revision else None
        if cached is not None:
            refs = sorted({r for rev in cached.revisions for r in rev.refs})
            raise CheckpointError(f"hub repo {ref.target!r}: revision {ref.revision!r} is not {_where()}; "
                                  f"cached revisions: {', '.join(refs) or 'none'} (or a commit hash)") from e
        raise CheckpointError(_missing_repo_message(ref.target, ref.subfolder, ref.revision, e)) from e


def checkpoint_folder(text: str | Path) -> Path:
    """A local folder for ``text``: the path itself, or a hub reference's files in the local cache (a repo
    without subfolder: its whole snapshot, e.g. every configuration of a release repo)."""
    ref = parse_sae_ref(text)
    if not ref.hub:
        path = Path(ref.target) / (ref.subfolder or "")
        if not path.exists():
            raise CheckpointError(f"{path}: no such file or folder")
        return path
    return locate_sae(ref, hash_files=False).path if ref.subfolder else _snapshot(ref)


def _locate_hub(ref: SAERef, hash_files: bool) -> LocatedSAE:
    root = _snapshot(ref)
    path = root / ref.subfolder if ref.subfolder else root
    if not checkpoint_files(path):
        try:
            existing = list_configurations(ref.target, ref.revision)
        except CheckpointError:
            existing = configurations(_local_files(root))
        if ref.subfolder:
            raise CheckpointError(_missing_config_message(ref.target, ref.subfolder, ref.revision, existing))
        raise CheckpointError(f"hub repo {ref.target!r}: no SAE checkpoint at the repo root; it holds one "
                              f"per configuration: {', '.join(existing) or 'none found'}; pass one with "
                              f"--subfolder or {ref.target}:<configuration>")
    prov = {"kind": "hub", "repo": ref.target, "subfolder": ref.subfolder, "revision": ref.revision or "main",
            "commit": root.name, "files": file_hashes(path) if hash_files else {}, "ref": str(ref)}
    return LocatedSAE(ref, path, prov)


def _local_files(root: Path) -> list[str]:
    return [str(Path(d, f).relative_to(root)).replace(os.sep, "/")
            for d, _, names in os.walk(root, followlinks=True) for f in names]


def locate_sae(ref: SAERef | str | Path, subfolder: str | None = None, revision: str | None = None,
                hash_files: bool = True) -> LocatedSAE:
    """Resolve a reference (see :func:`parse_sae_ref`) to local files and their provenance.

    Local: ``{"kind": "local", "path", "files"}``; hub: ``{"kind": "hub", "repo", "subfolder",
    "revision", "commit", "files"}``, ``files`` mapping each checkpoint file to its sha256 (left empty
    when ``hash_files`` is False).
    """
    parsed = ref if isinstance(ref, SAERef) else parse_sae_ref(ref, subfolder, revision)
    if parsed.hub:
        return _locate_hub(parsed, hash_files)
    path = Path(parsed.target)
    if parsed.subfolder:
        path = path / parsed.subfolder
        if not path.exists():
            existing = configurations(_local_files(Path(parsed.target)))
            raise CheckpointError(f"{parsed.target}: no subfolder {parsed.subfolder!r}; SAE folders there: "
                                  f"{', '.join(existing) or 'none'}")
    elif not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    prov = {"kind": "local", "path": str(path.resolve()), "files": file_hashes(path) if hash_files else {},
            "ref": str(parsed)}
    return LocatedSAE(parsed, path, prov)


REFERENCE_FILE = "reference.json"
"""A folder holding this file stands for a checkpoint elsewhere (:mod:`visae.sae.formats.reference`)."""


def write_reference(folder: Path | str, located: LocatedSAE) -> Path:
    """Write ``<folder>/reference.json``: the checkpoint ``located`` points at, pinned (hub: to the commit it
    resolved to; local: the absolute path), and its provenance with the files' sha256; return the file."""
    from visae.io import atomic_write_json

    prov = dict(located.provenance)
    if not prov.get("files"):
        prov["files"] = file_hashes(located.path)
    ref = located.ref
    pinned = (str(SAERef(ref.target, ref.subfolder, str(prov["commit"]), hub=True)) if ref.hub
              else str(located.path.resolve()))
    path = Path(folder) / REFERENCE_FILE
    atomic_write_json(path, {"format": "visae-reference", "ref": pinned, "provenance": prov})
    return path


def read_reference(folder: Path | str) -> dict[str, Any] | None:
    """The ``reference.json`` of a folder (``ref``, ``provenance``), or None when it has none."""
    import json

    path = Path(folder) / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e}); delete the folder and rerun") from e
    if not isinstance(data, dict) or not isinstance(data.get("ref"), str):
        raise CheckpointError(f"{path}: expected {{'ref': ..., 'provenance': ...}}; delete the folder "
                              "and rerun")
    return data


def release_backbone(repo_id: str) -> str | None:
    """The backbone short name of one of the authors' release repos, else None."""
    return next((b for b, r in RELEASE_REPOS.items() if r == repo_id), None)


def is_hub_id(text: str) -> bool:
    """``org/name`` shape (with optional ``:subfolder`` / ``@revision``), whether or not it exists."""
    return _REF.fullmatch(text) is not None and _HUB_ID.match(text) is not None


__all__ = ["OURS", "RELEASE_CONFIGS", "RELEASE_REPOS", "LocatedSAE", "SAERef", "cached_repos",
           "checkpoint_files", "checkpoint_folder",
           "checkpoint_markers", "configurations", "file_hashes", "is_hub_id", "list_configurations",
           "locate_sae",
           "parse_sae_ref", "read_reference", "release_backbone", "write_reference"]
