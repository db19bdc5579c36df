"""``visae export``: the folder a hub repo of SAEs would hold.

One SAE: ``OUT/{model.safetensors, config.yaml, README.md}``. A grid (a ``visae train`` output folder):
one subfolder per configuration (``OUT/batchtopk_16x_k128/…``) and one ``README.md`` at the root. The
README is a Hugging Face model card: metadata (``library_name: visae``, ``base_model`` when the
backbone is a timm model), how to load it, every configuration's settings, the metrics found in
``visae eval`` result files, and the provenance (training cache, settings, file hashes).
Checkpoints in other formats (the authors' release, SAELens, saev …) are converted on the way.

``fmt="saelens"`` or ``"saev"`` writes each configuration in that library's layout instead
(:mod:`visae.sae.writers`: normalization folded into the weights, checked by loading the files back).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visae import __version__
from visae.errors import CheckpointError, ConfigError
from visae.io import atomic_write_text, atomic_write_with, sha256_file
from visae.sae.hub import checkpoint_files

CARD_FILE = "README.md"


@dataclass
class Exported:
    """One exported configuration."""

    name: str
    source: Path
    dest: Path
    config: dict[str, Any]
    fingerprint: str
    files: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)


def find_saes(sae_dir: Path) -> list[Path]:
    """``sae_dir`` itself when it is a checkpoint, else its immediate subfolders that are, in name order."""
    if checkpoint_files(sae_dir):
        return [sae_dir]
    found = sorted(p for p in sae_dir.iterdir() if p.is_dir()
                   and checkpoint_files(p)) if sae_dir.is_dir() else []
    if not found:
        raise CheckpointError(f"{sae_dir}: no SAE checkpoint in it or its subfolders (a 'visae train' output "
                              "folder, or one SAE folder with model.safetensors + config.yaml)")
    return found


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: is a file; give a folder to export into")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"{out}: folder is not empty; choose a new folder, or pass --force to replace the "
                          "exported files in it")


def _copier(src: Path) -> Any:
    def copy(tmp: Path) -> None:
        shutil.copyfile(src, tmp)

    return copy


def _copy_or_convert(src: Path, dest: Path, origin: Any = None) -> None:
    from visae.sae.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_sae, save_sae
    from visae.sae.hub import locate_sae

    dest.mkdir(parents=True, exist_ok=True)
    if (src / WEIGHTS_FILE).is_file() and (src / CONFIG_FILE).is_file():
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            atomic_write_with(dest / name, _copier(src / name))
        return
    prov = locate_sae(origin if origin is not None else src).provenance
    save_sae(load_sae(src), dest, provenance={"converted_from": prov})


def _result_files(roots: Sequence[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """``visae eval`` result JSONs (``metric``, ``value``, ``inputs``) under ``roots``."""
    out = []
    for root in roots:
        for dir_name, _, files in os.walk(root):
            for f in sorted(files):
                if not f.endswith(".json"):
                    continue
                try:
                    data = json.loads(Path(dir_name, f).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                if isinstance(data, dict) and {"metric", "value", "inputs"} <= set(data):
                    out.append((Path(dir_name, f), data))
    return out


def _same_sae(inputs: dict[str, Any], item: Exported) -> bool:
    sae = str(inputs.get("sae", ""))
    if sae == item.fingerprint:
        return True
    prov = inputs.get("sae_provenance") or {}
    candidates = [sae, str(prov.get("path", ""))] if isinstance(prov, dict) else [sae]
    for c in candidates:
        try:
            if c and Path(c).exists() and Path(c).resolve() == item.source.resolve():
                return True
        except OSError:
            continue
    return False


def _attach_metrics(items: list[Exported], roots: Sequence[Path]) -> None:
    for _path, data in _result_files(roots):
        inputs: dict[str, Any] = data["inputs"] if isinstance(data.get("inputs"), dict) else {}
        for item in items:
            if _same_sae(inputs, item):
                item.metrics[str(data["metric"])] = {"value": data.get("value"), "cache": inputs.get("cache"),
                                                     "cache_path": inputs.get("cache_path")}


def _write_foreign(src: Path, dest: Path, fmt: str, origin: Any = None) -> dict[str, Any]:
    """Write ``src`` in another library's layout into ``dest``; the visae config of what was written."""
    from visae.sae.checkpoint import load_sae, sae_config
    from visae.sae.hub import locate_sae
    from visae.sae.writers import WRITERS, check_export

    sae = load_sae(src)
    prov = {"converted_from": locate_sae(origin if origin is not None else src).provenance}
    config = sae_config(sae, prov)
    metadata = {k: config["provenance"].get(k) for k in ("backbone", "layer", "cache")
                if config["provenance"].get(k) is not None}
    WRITERS[fmt](sae, dest, metadata)
    check_export(sae, load_sae(dest), dest)
    return config


def export_saes(sae_dir: Path | str, out: Path | str, results: Sequence[Path | str] = (),
                repo_id: str | None = None, force: bool = False, fmt: str = "visae") -> list[Exported]:
    """Write the hub-repo folder for the SAE(s) in ``sae_dir`` (a folder, or a hub reference) into ``out``;
    return what was exported.

    ``results``: folders searched (besides ``sae_dir``) for ``visae eval`` result files of these SAEs;
    their values go into the model card. ``repo_id`` only names the repo in the card's examples. ``fmt``:
    ``visae`` (default), ``saelens`` or ``saev`` (see :mod:`visae.sae.writers`).
    """
    from visae.sae.checkpoint import load_sae, sae_fingerprint
    from visae.sae.hub import SAERef, checkpoint_folder, parse_sae_ref
    from visae.sae.writers import EXPORT_FORMATS

    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format {fmt!r} is not an export format (choose one of "
                          f"{', '.join(EXPORT_FORMATS)})")
    src_dir, out_dir = checkpoint_folder(sae_dir), Path(out)
    ref = parse_sae_ref(sae_dir)
    sources = find_saes(src_dir)
    _check_out(out_dir, force)
    single = sources == [src_dir]
    items = []
    for src in sources:
        dest = out_dir if single else out_dir / src.name
        origin = SAERef(ref.target, ref.subfolder or src.name, ref.revision, hub=True) if ref.hub else None
        if fmt == "visae":
            _copy_or_convert(src, dest, origin)
            sae = load_sae(dest)  # the export must load back
            config = yaml.safe_load((dest / "config.yaml").read_text(encoding="utf-8"))
        else:
            config = _write_foreign(src, dest, fmt, origin)
            sae = load_sae(src)
        files = {p.name: sha256_file(p) for p in checkpoint_files(dest)}
        items.append(Exported(src.name if not single else (src.resolve().name or "sae"), src, dest, config,
                              sae_fingerprint(sae), files))
    _attach_metrics(items, [src_dir, *(Path(r) for r in results)])
    atomic_write_text(out_dir / CARD_FILE, model_card(items, repo_id, single))
    return items


# --- model card -----------------------------------------------------------------------------------------
def _training_context(item: Exported) -> dict[str, Any]:
    prov = item.config.get("provenance") or {}
    ctx = {"backbone": prov.get("backbone"), "layer": prov.get("layer"), "source": None, "split": None,
           "n_images": None}
    cache = Path(str(prov.get("cache", ""))) / "manifest.json"
    if prov.get("cache") and cache.is_file():
        try:
            m = json.loads(cache.read_text(encoding="utf-8"))
            src = m.get("source") or {}
            ctx.update(backbone=ctx["backbone"] or m.get("backbone"),
                       layer=ctx["layer"] if ctx["layer"] is not None else m.get("layer"),
                       source=src.get("spec"), split=src.get("split"), n_images=m.get("n_images"))
        except (OSError, ValueError):
            pass
    return ctx


def _base_model(backbone: str | None) -> str | None:
    if not backbone:
        return None
    from visae.backbones.registry import backbone_entry

    entry = backbone_entry(backbone)
    timm_name = entry.timm_name if entry is not None else (backbone if "." in backbone else None)
    return f"timm/{timm_name}" if timm_name else None


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _config_table(items: list[Exported]) -> list[str]:
    lines = ["| configuration | family | d_in | d_sae | expansion | k | inference L0 | sha256 (weights) |",
             "|---|---|---|---|---|---|---|---|"]
    for it in items:
        c, prov = it.config, it.config.get("provenance") or {}
        lines.append(f"| {it.name} | {c.get('family')} | {c.get('d_in')} | {c.get('d_sae')} | "
                     f"{_fmt(c.get('expansion'))} | {_fmt(c.get('k'))} | {_fmt(prov.get('inference_l0'))} | "
                     f"`{it.files.get('model.safetensors', '')[:16]}` |")
    return lines


def _metrics_table(items: list[Exported]) -> list[str]:
    names = sorted({m for it in items for m in it.metrics})
    if not names:
        return ["No `visae eval` results were found for these SAEs. Evaluate with "
                "`visae eval --sae <folder> --cache <cache> --out <folder>/eval`, then export again."]
    lines = ["| configuration | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for it in items:
        lines.append(f"| {it.name} | "
                     + " | ".join(_fmt((it.metrics.get(n) or {}).get("value")) for n in names)
                     + " |")
    caches = sorted({str(m.get("cache")) for it in items for m in it.metrics.values() if m.get("cache")})
    lines += ["", f"Evaluation cache(s) (content hash): {', '.join(f'`{c}`' for c in caches)}."]
    return lines


def _provenance(items: list[Exported]) -> list[str]:
    lines = []
    for it in items:
        prov = dict(it.config.get("provenance") or {})
        lines += [f"### {it.name}", "", "```yaml",
                  yaml.safe_dump({"provenance": prov, "files_sha256": it.files}, sort_keys=False).rstrip(),
                  "```", ""]
    return lines


def model_card(items: list[Exported], repo_id: str | None, single: bool) -> str:
    """The README.md of an export (Hugging Face model card with metadata)."""
    from huggingface_hub import ModelCardData

    ctx = _training_context(items[0])
    data = ModelCardData(library_name="visae",
                         tags=["sparse-autoencoder", "vision-transformer", "interpretability",
                                                       "visae"], base_model=_base_model(ctx["backbone"]))
    repo = repo_id or "<org>/<repo>"
    first = "" if single else items[0].name
    load = f'visae.load_sae("{repo}"' + (f', subfolder="{first}")' if first else ")")
    where = (f"`{ctx['backbone']}`, block {ctx['layer']}" if ctx["backbone"] else "an unrecorded backbone")
    data_desc = (f" on `{ctx['source']}` (split {ctx['split']}, {ctx['n_images']} images)"
                 if ctx["source"] else "")
    body = [f"# Sparse autoencoders: {ctx['backbone'] or 'ViT'} layer "
            f"{ctx['layer'] if ctx['layer'] is not None else '?'}",
            "", f"{len(items)} sparse autoencoder(s) on the patch-token activations of {where}{data_desc}, "
            f"exported by visae {__version__}." + ("" if single else " One subfolder per configuration."),
            "", "## Load", "", "```python", "import visae", "", f"sae = {load}", "```", "",
            f"Command line: `visae eval --sae {repo}{':' + first if first else ''} --cache "
            "<activation cache>`",
            "", "## Configurations", "", *_config_table(items), "", "## Metrics (ViSAEBench)", "",
            *_metrics_table(items), "", "## Provenance", "", *_provenance(items),
            "## Config", "", "Each `config.yaml` holds the settings below plus the activation normalization "
            "(mean vector and scalar std) the SAE expects.", ""]
    for it in items:
        shown = {k: v for k, v in it.config.items() if k not in ("normalization", "provenance")}
        body += [f"### {it.name}", "", "```yaml", yaml.safe_dump(shown, sort_keys=False).rstrip(), "```", ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)


__all__ = ["CARD_FILE", "Exported", "export_saes", "find_saes", "model_card"]
