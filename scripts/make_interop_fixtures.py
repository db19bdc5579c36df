"""Write tiny saev checkpoints with saev's OWN code at old versions (header schemas 1–5), for
tests/sae/test_interop_saev.py (and, with ``--prisma-repo``, ViT-Prisma SAEs with ViT-Prisma's own code, for
tests/sae/test_interop_vit_prisma.py; and visae's saev export loaded by saev, for tests/sae/test_writers.py).

saev 0.1.0 (PyPI, pre-schema) is tested live; the schemas after it exist only in saev's git history. This
script exports each listed commit's ``src`` into a temporary folder outside this repository (``git archive``),
runs that version's ``saev.nn`` in a subprocess to build a small SAE with seeded random weights, saves it with
that version's ``dump``, loads it back with that version's ``load``, and records that version's own eval-mode
forward pass (codes, reconstruction, Matryoshka prefix reconstructions where the version has them) on seeded
inputs. Only the generated files are written under ``tests/data/interop/saev/``; saev's code is not.

Usage::

    python scripts/make_interop_fixtures.py --saev-repo SAEV_GIT [--prisma-repo VIT_PRISMA_GIT]

Needs the packages saev imports (torch, einops, beartype, jaxtyping, tyro; orjson for schema 5: pass
``--extra-path`` to a folder that holds it when the environment lacks it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# name → (commit, kind, top_k); the commit is the saev version whose own dump/load/forward made the file.
# Schema 1 headers look the same before and after saev stopped subtracting b_dec in the encoder (e7ca004,
# 2025-07-31): "early" files are from before, "late" after; "zero" ones have b_dec = 0 (both readings agree).
VERSIONS: dict[str, tuple[str, str, int]] = {
    "schema1_early_relu": ("5951e84", "relu", 0),
    "schema1_early_relu_zero": ("5951e84", "relu", 0),
    "schema1_early_topk": ("33f4c14", "topk", 4),
    "schema1_late_relu": ("f5d892c", "relu", 0),
    "schema1_late_topk": ("f5d892c", "topk", 4),
    "schema1_late_batchtopk_zero": ("f5d892c", "batchtopk", 4),
    "schema2_relu": ("8d38c23", "relu", 0),
    "schema2_topk": ("8d38c23", "topk", 4),
    "schema2_batchtopk": ("8d38c23", "batchtopk", 4),
    "schema3_relu": ("c3dd0ae", "relu", 0),
    "schema3_batchtopk": ("c3dd0ae", "batchtopk", 4),
    "schema4_topk": ("513cd52", "topk", 4),
    "schema4_batchtopk_persample": ("513cd52", "batchtopk", 4),
    "schema4_batchtopk_batch": ("b94e5ea", "batchtopk", 4),  # batch-coupled, no threshold: must be refused
    "schema4_batchtopk_threshold": ("ce1add2", "batchtopk", 4),
    "schema5_relu": ("3d73f1f", "relu", 0),
    "schema5_topk": ("3d73f1f", "topk", 4),
    "schema5_batchtopk": ("3d73f1f", "batchtopk", 4),
}

D_MODEL, EXPANSION, N_ROWS = 8, 4, 24

# Runs inside the old saev version (its src first on sys.path).
CHILD = r'''
import dataclasses, inspect, json, sys, torch
from safetensors.torch import save_file
import saev
from saev.nn import modeling as M
kind, top_k, out, d, exp = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
zero_bdec = sys.argv[6] == "1"
acts = {"relu": "Relu", "topk": "TopK", "batchtopk": "BatchTopK"}
cfg_cls = getattr(M, "SparseAutoencoderConfig", None)
if cfg_cls is not None and dataclasses.is_dataclass(cfg_cls):  # schema >= 2: activation as a field
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    act_cls = getattr(M, acts[kind])
    act = act_cls(top_k=top_k) if kind != "relu" else act_cls()
    kw = {"activation": act}
    kw.update({"d_model": d} if "d_model" in names else {"d_vit": d})
    kw.update({"d_sae": d * exp} if "d_sae" in names else {"exp_factor": exp})
    cfg = cfg_cls(**kw)
else:  # schema 1: the config is the activation class (in saev.nn.modeling, earlier in saev.config)
    act_cls = getattr(M, acts[kind], None)
    if not dataclasses.is_dataclass(act_cls):
        from saev import config as C
        act_cls = getattr(C, acts[kind])
    kw = {"d_vit": d, "exp_factor": exp}
    if kind != "relu":
        kw["top_k"] = top_k
    cfg = act_cls(**kw)
torch.manual_seed(1234)
sae = M.SparseAutoencoder(cfg)
with torch.no_grad():
    for name, p in sae.named_parameters():
        p.copy_(torch.randn_like(p) * (0.5 if name.startswith("W") else 0.3))
    sd = sae.state_dict()
    if "activation.threshold" in sd:
        sae.activation.threshold.fill_(0.4)
    if zero_bdec:
        sae.b_dec.zero_()
M.dump(out + "/sae.pt", sae)
back = M.load(out + "/sae.pt")
back.eval()
x = torch.randn(N_ROWS, d) * 1.5 + 0.2
with torch.no_grad():
    res = back(x)
    if isinstance(res, tuple) and not hasattr(res, "x_hats"):
        recon, codes = res[0], res[1]
    else:
        recon, codes = res.x_hats, res.f_x
    if recon.ndim == 3:  # [batch, n_prefixes, d]: the full reconstruction is the last prefix
        recon = recon[:, -1, :]
    tensors = {"x": x, "codes": codes.contiguous(), "recon": recon.contiguous()}
    if "prefixes" in inspect.signature(back.decode).parameters:
        prefixes = torch.tensor([d * exp // 4, d * exp // 2, d * exp], dtype=torch.int64)
        tensors["prefixes"] = prefixes
        tensors["prefix_recons"] = back.decode(codes, prefixes=prefixes).contiguous()
save_file(tensors, out + "/expected.safetensors")
print(json.dumps({"header": open(out + "/sae.pt", "rb").readline().decode()[:200]}))
'''.replace("N_ROWS", str(N_ROWS))


# Runs inside saev's newest version: load visae's saev export with saev's own loader, record its outputs.
EXPORT_CHILD = r'''
import sys, torch
from safetensors.torch import load_file, save_file
from saev.nn import modeling as M
folder = sys.argv[1]
sae = M.load(folder + "/sae.pt").eval()
a = load_file(folder + "/inputs.safetensors")["a"]
with torch.no_grad():
    out = sae(a)
save_file({"a": a, "codes": out.f_x.contiguous(), "recon": out.x_hats[:, -1, :].contiguous()},
          folder + "/expected.safetensors")
'''
EXPORT_COMMIT = "3d73f1f"


def make_export_fixtures(root: Path, out: Path, extra_path: str) -> None:
    """visae's ``--format saev`` export of each planted SAE of tests/sae/test_writers.py, loaded by saev."""
    from safetensors.torch import save_file

    sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "sae"))
    from test_writers import planted_sae, raw_inputs  # type: ignore[import-not-found]

    from visae.sae.writers import write_saev

    for family in ("relu", "topk", "batchtopk"):
        sae = planted_sae(family)
        dest = out / family
        write_saev(sae, dest)
        save_file({"a": raw_inputs(sae).contiguous()}, str(dest / "inputs.safetensors"))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), extra_path) if p)}
        subprocess.run([sys.executable, "-W", "ignore", "-c", EXPORT_CHILD, str(dest.resolve())], check=True,
                       env=env, cwd=str(dest.parent))
        (dest / "inputs.safetensors").unlink()
        print("export", family)


# Runs inside ViT-Prisma (its repository's src first on sys.path; its PyPI release has no SAE code).
PRISMA_CHILD = r'''
import sys, torch
from safetensors.torch import save_file
from vit_prisma.sae.config import VisionModelSAERunnerConfig
from vit_prisma.sae.sae import GatedSparseAutoencoder, SparseAutoencoder, StandardSparseAutoencoder
act, norm, out, arch = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
cfg = VisionModelSAERunnerConfig(d_in=8, expansion_factor=4, activation_fn_str=act, architecture=arch,
                                 activation_fn_kwargs={"k": 4} if act == "topk" else {},
                                 normalize_activations=norm, log_to_wandb=False, checkpoint_path=out,
                                 _device="cpu")
torch.manual_seed(99)
sae = (GatedSparseAutoencoder if arch == "gated" else StandardSparseAutoencoder)(cfg)
with torch.no_grad():
    for name, p in sae.named_parameters():
        p.copy_(torch.randn_like(p) * (0.5 if name.startswith("W") else 0.3))
cfg.save_config(out + "/config.json")  # what its trainer's checkpoint() writes
sae.save_model(out + "/n_images_100.pt")
back = SparseAutoencoder.load_from_pretrained(out + "/n_images_100.pt").eval()
x = torch.randn(24, 8) * 1.5 + 0.2
with torch.no_grad():
    _, codes = back.encode(x)
    recon = back.decode(codes)
save_file({"x": x, "codes": codes.contiguous(), "recon": recon.contiguous()}, out + "/expected.safetensors")
'''
PRISMA_COMMIT = "aa5ff6a"
PRISMA_VERSIONS = {"relu": ("relu", "none", "standard"), "topk": ("topk", "none", "standard"),
                   "topk_layer_norm": ("topk", "layer_norm", "standard"), "gated": ("relu", "none", "gated")}


def make_prisma_fixtures(repo: Path, out: Path, extra_path: str, tmp: Path,
                         only: list[str] | None = None) -> None:
    """ViT-Prisma SAEs saved by its own save_config + save_model, with its own outputs (``only``: those
    names)."""
    root = export_commit(repo, PRISMA_COMMIT, tmp, part="src")
    for name, (act, norm, arch) in PRISMA_VERSIONS.items():
        if only is not None and name not in only:
            continue
        dest = out / name
        dest.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), extra_path) if p)}
        subprocess.run([sys.executable, "-W", "ignore", "-c", PRISMA_CHILD, act, norm, str(dest.resolve()),
                        arch],
                       check=True, env=env, cwd=str(tmp), stdout=subprocess.DEVNULL)
        print("vit_prisma", name)


def export_commit(repo: Path, commit: str, dest: Path, part: str | None = None) -> Path:
    """``git archive`` of the commit's python package into ``dest``; the folder holding the package."""
    if part is None:
        names = subprocess.run(["git", "-C", str(repo), "ls-tree", "--name-only", commit], check=True,
                               capture_output=True, text=True).stdout.split()
        part = "src" if "src" in names else "saev"
    tar_path = dest / f"{commit}.tar"
    with open(tar_path, "wb") as f:
        subprocess.run(["git", "-C", str(repo), "archive", commit, part], check=True, stdout=f)
    with tarfile.open(tar_path) as t:
        t.extractall(dest / commit, filter="data")
    return dest / commit / ("src" if part == "src" else "")


def main() -> None:
    """Write every version's fixture folder and a manifest."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--saev-repo", type=Path, required=True, help="a git clone of OSU-NLP-Group/saev")
    ap.add_argument("--out", type=Path, default=Path("tests/data/interop/saev"))
    ap.add_argument("--prisma-repo", type=Path, help="a git clone of Prisma-Multimodal/ViT-Prisma (needs "
                                                      "line_profiler on --extra-path)")
    ap.add_argument("--extra-path", default="", help="extra sys.path entries (e.g. a folder with orjson)")
    args = ap.parse_args()
    manifest = {}
    with tempfile.TemporaryDirectory() as tmp:
        roots: dict[str, Path] = {}
        for name, (commit, kind, top_k) in VERSIONS.items():
            if commit not in roots:
                roots[commit] = export_commit(args.saev_repo, commit, Path(tmp))
            out = args.out / name
            out.mkdir(parents=True, exist_ok=True)
            paths = (str(roots[commit]), args.extra_path)
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
            full = subprocess.run(["git", "-C", str(args.saev_repo), "rev-parse", commit], check=True,
                                  capture_output=True, text=True).stdout.strip()
            args_child = [kind, str(top_k), str(out.resolve()), str(D_MODEL), str(EXPANSION),
                          "1" if name.endswith("_zero") else "0"]
            subprocess.run([sys.executable, "-W", "ignore", "-c", CHILD, *args_child], check=True, env=env,
                           cwd=tmp, stdout=subprocess.DEVNULL)
            header = json.loads((out / "sae.pt").read_bytes().split(b"\n", 1)[0])
            manifest[name] = {"saev_commit": full, "kind": kind, "top_k": top_k or None,
                              "schema": header.get("schema")}
            print(name, manifest[name])
        (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        if EXPORT_COMMIT not in roots:
            roots[EXPORT_COMMIT] = export_commit(args.saev_repo, EXPORT_COMMIT, Path(tmp))
        make_export_fixtures(roots[EXPORT_COMMIT], args.out.parent / "saev_export", args.extra_path)
        if args.prisma_repo is not None:
            make_prisma_fixtures(args.prisma_repo, args.out.parent / "vit_prisma", args.extra_path, Path(tmp))


if __name__ == "__main__":
    main()
