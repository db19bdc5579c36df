"""Untrusted files: checkpoints and configs are data. A pickle that would run code is refused without
running it; YAML tags that build Python objects are refused; names inside configs, checkpoints and
manifests cannot make visae write (or read shards) outside the output folder."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from visae.backbones.layout import TokenLayout
from visae.cache.testing import write_synthetic_cache
from visae.config import read_yaml
from visae.errors import CheckpointError, ConfigError, VisaeError
from visae.io import safe_join
from visae.sae.checkpoint import load_sae
from visae.sae.train import SAESpec


class _Exploit:
    """Unpickling this calls ``open(marker, 'w')``: the file appears iff the pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _hostile_pt(path: Path, marker: Path) -> Path:
    """A real torch.save zip whose pickle also holds the exploit next to plausible tensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"encoder.final_block.0.weight": torch.zeros(4, 2), "encoder.final_block.0.bias": torch.zeros(4),
             "dictionary._weights": torch.ones(4, 2), "payload": _Exploit(marker)}
    torch.save(state, path)
    return path


def test_pickle_checkpoint_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for name in ("batchtopk_2x_k1/sae.pt", "other/sae.pt"):
        pt = _hostile_pt(tmp_path / name, marker)
        with pytest.raises(CheckpointError, match="refused to unpickle"):
            load_sae(pt.parent)
        assert not marker.exists()
    # saev layout (JSON header line, then the pickle)
    saev = tmp_path / "saev" / "sae.pt"
    saev.parent.mkdir()
    buf = io.BytesIO()
    torch.save({"W_enc": torch.zeros(2, 4), "x": _Exploit(marker)}, buf)
    saev.write_bytes(b'{"schema": 1, "cfg": {}}\n' + buf.getvalue())
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_sae(saev)
    # a plain pickle (not even a torch zip)
    raw = tmp_path / "raw" / "sae.pt"
    raw.parent.mkdir()
    raw.write_bytes(pickle.dumps({"w": _Exploit(marker)}))
    with pytest.raises(CheckpointError):
        load_sae(raw)
    assert not marker.exists()


def test_training_state_with_pickle_is_refused(tmp_path: Path) -> None:
    from visae.sae.train import TrainConfig, train_saes

    marker = tmp_path / "pwned"
    rng = np.random.default_rng(0)
    cache = write_synthetic_cache(tmp_path / "c", rng.normal(size=(8, 16, 4)), np.arange(8) % 2, ["a", "b"],
                                  TokenLayout(("cls",), 4, 4, 8))
    out = tmp_path / "t"
    out.mkdir()
    torch.save({"step": 1, "x": _Exploit(marker)}, out / "train_state.pt")
    with pytest.raises(CheckpointError, match=r"train_state\.pt: unreadable training state"):
        train_saes(cache, SAESpec(family="topk", d_sae=8, k=2), out,
                   TrainConfig(batch_size=8, heldout_batches=1, device="cpu", progress=False))
    assert not marker.exists()


def test_safetensors_header_is_data(tmp_path: Path) -> None:
    """A safetensors file is parsed, never executed; junk in it is a CheckpointError naming the file."""
    d = tmp_path / "s"
    d.mkdir()
    (d / "config.yaml").write_text("family: topk\nd_in: 2\nd_sae: 4\nk: 1\n")
    header = json.dumps({"W_enc": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 4]}}).encode()
    (d / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_sae(d)


def test_yaml_python_tags_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for text in (f"x: !!python/object/apply:os.system ['touch {marker}']\n",
                 "x: !!python/object:pathlib.PosixPath {}\n",
                 f"x: !!python/object/new:subprocess.Popen [['touch', '{marker}']]\n"):
        cfg = tmp_path / "evil.yaml"
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=r"evil\.yaml: not valid YAML"):
            read_yaml(cfg)
        from visae.study.config import load_study_config

        with pytest.raises(ConfigError):
            load_study_config(cfg)
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    (ckpt / "config.yaml").write_text(f"family: !!python/object/apply:os.system ['touch {marker}']\n")
    (ckpt / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"config\.yaml: cannot read YAML"):
        load_sae(ckpt)
    assert not marker.exists()


def test_names_cannot_escape_the_output_folder(tmp_path: Path) -> None:
    for bad in ("../../etc", "/etc", "a/../../b"):
        with pytest.raises(VisaeError, match="outside the output folder"):
            safe_join(tmp_path, bad)
    assert safe_join(tmp_path, "a/b") == (tmp_path / "a" / "b").resolve()
    for bad in ("../../etc", "/etc/x", "a/b", ".."):
        with pytest.raises(ValueError, match="plain folder name"):
            SAESpec(family="topk", d_sae=8, k=2, name=bad)
    SAESpec(family="topk", d_sae=8, k=2, name="ok_name")


def test_study_folder_names_come_from_hashes(tmp_path: Path) -> None:
    """A study's sub-folders are content hashes, whatever names the YAML uses ('../../etc' as a grid or task
    name stays a label); only out_dir, the user's own choice, places the study."""
    import yaml

    from visae.study.config import load_study_config
    from visae.study.plan import plan_study

    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({
        "name": "../../etc", "out_dir": "out", "plugins": ["visae.study.testing"],
        "backbones": ["tiny-vit-a"], "layers": [1],
        "saes": [{"name": "../../etc", "expansions": [2], "ks": [4]}],
        "tasks": [{"name": "../../../etc/passwd", "kind": "retrieval"}],
        "data": {"train": {"spec": "offline:digits"}, "eval": {"spec": "offline:digits"}}}))
    cfg = load_study_config(study)
    root = Path(cfg.out_dir)
    for job in plan_study(cfg).jobs:
        for out in job.outputs:
            assert safe_join(root, out).is_relative_to(root.resolve()), out
            assert ".." not in Path(out).parts


def test_task_result_name_cannot_escape(tmp_path: Path) -> None:
    from visae.tasks import base

    class R:
        task = "../../../escape"

    with pytest.raises(VisaeError, match="outside the output folder"):
        base.write_task_result(tmp_path / "o", R(), None, {}, 0.0)  # type: ignore[arg-type]
    assert not (tmp_path.parent / "escape.json").exists()


def test_zip_torch_file_is_not_a_safetensors_bypass(tmp_path: Path) -> None:
    """A torch zip renamed model.safetensors is rejected by the safetensors parser (never unpickled)."""
    marker = tmp_path / "pwned"
    d = tmp_path / "z"
    d.mkdir()
    (d / "config.yaml").write_text("family: topk\nd_in: 2\nd_sae: 4\nk: 1\n")
    torch.save({"W_enc": torch.zeros(2, 4), "x": _Exploit(marker)}, d / "model.safetensors")
    assert zipfile.is_zipfile(d / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_sae(d)
    assert not marker.exists()
