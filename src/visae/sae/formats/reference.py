"""Reference checkpoints: a folder holding ``reference.json`` stands for a checkpoint elsewhere — a hub repo's
subfolder pinned to a commit, or a local path — together with the sha256 of its files. A study writes one
per existing SAE it evaluates (instead of copying the weights); loading it loads what it points at, after
checking that the files are still the ones recorded."""

from __future__ import annotations

from pathlib import Path

from visae.errors import CheckpointError
from visae.sae.base import SAE
from visae.sae.formats import CheckpointFormat
from visae.sae.hub import REFERENCE_FILE, locate_sae, read_reference


def detect(path: Path) -> Path | None:
    """A folder holding ``reference.json`` (or that file itself)."""
    if path.is_dir() and (path / REFERENCE_FILE).is_file():
        return path
    return path.parent if path.is_file() and path.name == REFERENCE_FILE else None


def load(folder: Path) -> SAE:
    """The SAE the reference points at; CheckpointError when its files changed since it was written."""
    from visae.sae.checkpoint import load_sae

    data = read_reference(folder)
    assert data is not None  # detect() saw the file
    located = locate_sae(data["ref"])
    if located.path.is_dir() and read_reference(located.path) is not None:
        raise CheckpointError(f"{folder / REFERENCE_FILE}: points at another reference ({data['ref']}); "
                              "references must point at checkpoint files")
    recorded = (data.get("provenance") or {}).get("files") or {}
    changed = sorted(name for name, digest in located.provenance["files"].items()
                     if name in recorded and recorded[name] != digest)
    missing = sorted(set(recorded) - set(located.provenance["files"]))
    if changed or missing:
        raise CheckpointError(f"{folder / REFERENCE_FILE}: the checkpoint at {data['ref']} is not the one "
                              f"recorded (changed: {', '.join(changed) or 'none'}; missing: "
                              f"{', '.join(missing) or 'none'}); delete this folder and rerun to evaluate "
                              "the current files")
    return load_sae(located.path)


FORMAT = CheckpointFormat("reference", (REFERENCE_FILE,), detect, load,
                          "reference.json: a checkpoint elsewhere (a hub commit or a path) with its "
                          "files' sha256")
