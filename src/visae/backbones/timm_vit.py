"""Any timm Vision Transformer as a :class:`Backbone`: residual-stream taps, token layout, pooled embedding.

The block-output path reproduces ``timm.models.vision_transformer.VisionTransformer.forward_features``
(timm 1.0.x): ``patch_embed → _pos_embed → patch_drop → norm_pre → blocks``, stopping after the highest
requested block. Other ViT-family models that have ``.blocks`` (EVA, …) go through their own
``forward_intermediates`` with ``norm=False`` (the raw residual stream) and the prefix tokens re-attached.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from visae.backbones.base import Backbone
from visae.backbones.common import (
    RGBTransform,
    check_pixels,
    load_state_dict_file,
    requested_layers,
    resolve_device,
)
from visae.backbones.layout import TokenLayout
from visae.errors import CheckpointError, ConfigError
from visae.io import hash_json, sha256_file

RANDOM_INIT_SEED = 0
"""Seed of the random initialisation used when neither hub weights nor a weights file are asked for."""


def timm_token_layout(model: nn.Module, name: str) -> TokenLayout:
    """Prefix tokens (CLS, distillation, registers, in sequence order), patch grid and patch size of a timm
    ViT."""
    names: list[str] = []
    if getattr(model, "cls_token", None) is not None:
        names.append("cls")
    if getattr(model, "dist_token", None) is not None:
        names.append("dist")
    reg_token = getattr(model, "reg_token", None)
    if reg_token is not None:
        names.extend(f"reg{i}" for i in range(int(reg_token.shape[1])))
    n_prefix = int(getattr(model, "num_prefix_tokens", len(names)))
    if n_prefix != len(names):
        raise ConfigError(
            f"backbone {name}: timm reports {n_prefix} prefix tokens but visae recognises {names}; "
            "this ViT variant's token layout is not supported")
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None or getattr(patch_embed, "grid_size", None) is None:
        raise ConfigError(f"backbone {name}: the timm model has no patch_embed.grid_size; not a ViT with a "
                          "fixed grid")
    grid_h, grid_w = (int(v) for v in patch_embed.grid_size)
    patch_h, patch_w = (int(v) for v in patch_embed.patch_size)
    if patch_h != patch_w:
        raise ConfigError(f"backbone {name}: non-square patches {patch_h}×{patch_w} are not supported")
    return TokenLayout(tuple(names), grid_h, grid_w, patch_h)


def timm_embedding_kind(model: nn.Module) -> str:
    """In words, what ``forward_head(forward_features(x), pre_logits=True)`` returns for this model."""
    fc_norm = getattr(model, "fc_norm", None)
    after = "" if fc_norm is None or isinstance(fc_norm, nn.Identity) else ", then the fc_norm LayerNorm"
    final_norm = getattr(model, "norm", None)
    normed = "" if final_norm is None or isinstance(final_norm, nn.Identity) else " after the final LayerNorm"
    if getattr(model, "dist_token", None) is not None:
        return f"mean of the CLS and distillation tokens{normed}"
    if getattr(model, "attn_pool", None) is not None:
        return f"attention-pool (MAP) head output over the tokens{normed}{after}"
    pool = str(getattr(model, "global_pool", "token"))
    if pool == "token":
        return f"CLS token{normed}{after}"
    if pool == "avg":
        return f"mean of the patch tokens{normed}{after}"
    return f"'{pool}' pooling of the tokens{normed}{after}"


def _filter_for(model: nn.Module) -> Callable[[dict[str, torch.Tensor], nn.Module],
                                              dict[str, torch.Tensor]] | None:
    """The model module's timm ``checkpoint_filter_fn`` (format conversion, position-table resampling)."""
    module = importlib.import_module(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is None:
        return None
    if type(model).__name__ == "VisionTransformerDistilled":
        return lambda sd, m: filter_fn(sd, m, adapt_layer_scale=True)
    return filter_fn  # type: ignore[no-any-return]


def load_weights_file(model: nn.Module, weights_path: str | Path) -> None:
    """Load a local state dict into a timm model (strict), via timm's own checkpoint filter."""
    state = load_state_dict_file(weights_path)
    filter_fn = _filter_for(model)
    if filter_fn is not None:
        state = filter_fn(state, model)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"weights_path {weights_path}: does not fit the timm architecture "
            f"(missing {result.missing_keys[:5]}…{len(result.missing_keys)} keys, "
            f"unexpected {result.unexpected_keys[:5]}…{len(result.unexpected_keys)} keys); "
            "pass the timm name the weights were trained with")


class TimmViT(Backbone):
    """A frozen timm ViT in eval mode: block outputs, pooled embedding and the model's own preprocessing."""

    def __init__(self, model: nn.Module, *, name: str, weights_id: str, device: torch.device) -> None:
        if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
            raise ConfigError(f"backbone {name}: {type(model).__name__} is not a ViT (no .blocks / "
                              ".patch_embed)")
        self.name = name
        self.weights_id = weights_id
        self.device = device
        self.model = model.eval().requires_grad_(False).to(device)
        self.layout = timm_token_layout(model, name)
        self.d_model = int(getattr(model, "embed_dim", getattr(model, "num_features", 0)))
        self.n_blocks = len(model.blocks)  # type: ignore[arg-type]
        self.embedding_kind = timm_embedding_kind(model)
        from timm.data import resolve_data_config

        data_config: dict[str, Any] = dict(resolve_data_config({}, model=model))
        # The pretrained cfg states the native size (e.g. 518 for DINOv2); the model runs at its grid's size.
        data_config["input_size"] = (3, *self.layout.image_size)
        self.data_config = data_config
        self._transform: Callable[[Image.Image], torch.Tensor] | None = None

    @classmethod
    def create(
        cls,
        timm_name: str,
        *,
        name: str | None = None,
        device: str | torch.device | None = "auto",
        weights_path: str | Path | None = None,
        image_size: int | None = None,
        pretrained: bool = True,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> TimmViT:
        """Build ``timm_name`` with hub weights (``pretrained``), a local ``weights_path``, or seeded random
        weights.

        ``weights_id``: ``timm:<arch>.<tag>`` (hub), the file's sha256, or ``timm:<arch>:random-seed0``;
        with ``model_kwargs`` a hash of them is appended.

        ``image_size`` is passed to timm as ``img_size`` (pretrained position tables are resampled to it);
        ``model_kwargs`` go to ``timm.create_model`` as well (e.g. tiny test architectures).
        """
        import timm

        kwargs = dict(model_kwargs or {})
        if image_size is not None:
            kwargs["img_size"] = image_size
        use_hub = pretrained and weights_path is None
        try:
            if use_hub:
                model = timm.create_model(timm_name, pretrained=True, **kwargs)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(RANDOM_INIT_SEED)
                    model = timm.create_model(timm_name, pretrained=False, **kwargs)
        except (RuntimeError, OSError, ValueError) as e:
            where = "download its weights from the Hugging Face hub" if use_hub else "build it"
            raise CheckpointError(
                f"backbone {name or timm_name}: timm could not {where} ({type(e).__name__}: {e}); "
                "with no hub access pass weights_path=<local state dict>, or pretrained=False for "
                "random weights"
            ) from e
        if weights_path is not None:
            load_weights_file(model, weights_path)
            weights_id = sha256_file(weights_path)
        elif use_hub:
            cfg = getattr(model, "pretrained_cfg", {}) or {}
            arch, tag = cfg.get("architecture", timm_name.split(".")[0]), cfg.get("tag")
            weights_id = f"timm:{arch}.{tag}" if tag else f"timm:{arch}"
        else:
            weights_id = f"timm:{timm_name.split('.')[0]}:random-seed{RANDOM_INIT_SEED}"
        if model_kwargs:  # a changed architecture is different weights, even under one name
            weights_id += f":kwargs-{hash_json(dict(model_kwargs))}"
        return cls(model, name=name or timm_name, weights_id=weights_id, device=resolve_device(device))

    @property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """timm's eval transform from the model's pretrained config (resize, center crop, mean/std)."""
        if self._transform is None:
            from timm.data import create_transform

            self._transform = RGBTransform(create_transform(**self.data_config, is_training=False))
        return self._transform

    def preprocessing_spec(self) -> dict[str, Any]:
        """timm data config: input size, interpolation, crop_pct, crop mode, mean, std."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.data_config.items()}

    def _prepare(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        check_pixels(pixels_bchw, self.layout.image_size, self.name)
        dtype = next(self.model.parameters()).dtype
        return pixels_bchw.to(device=self.device, dtype=dtype)

    def block_outputs(self, pixels_bchw: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Residual stream after each requested block (before the final norm), prefix tokens included."""
        wanted = requested_layers(layers, self.n_blocks, self.name)
        if not wanted:
            return {}
        from timm.models.vision_transformer import VisionTransformer

        m: Any = self.model
        with torch.inference_mode():
            x = self._prepare(pixels_bchw)
            if not isinstance(m, VisionTransformer):
                return self._via_forward_intermediates(x, wanted)
            x = m.patch_embed(x)
            x = m._pos_embed(x)
            x = m.patch_drop(x)
            x = m.norm_pre(x)
            out: dict[int, torch.Tensor] = {}
            for i, block in enumerate(m.blocks[: wanted[-1] + 1]):
                x = block(x)
                if i in wanted:
                    out[i] = x
            return out

    def _via_forward_intermediates(self, x: torch.Tensor, wanted: list[int]) -> dict[int, torch.Tensor]:
        results = self.model.forward_intermediates(  # type: ignore[operator]
            x, indices=wanted, return_prefix_tokens=self.layout.n_prefix > 0, norm=False,
            stop_early=True, output_fmt="NLC", intermediates_only=True)
        out = {}
        for layer, item in zip(wanted, results, strict=True):
            out[layer] = torch.cat([item[1], item[0]], dim=1) if isinstance(item, tuple) else item
        return out

    def final_norm(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """timm's final ``norm`` (None where it is an identity)."""
        norm = getattr(self.model, "norm", None)
        return None if norm is None or isinstance(norm, nn.Identity) else norm  # type: ignore[no-any-return]

    def embed(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        """``forward_head(forward_features(x), pre_logits=True)``: see :attr:`embedding_kind`."""
        m: Any = self.model
        with torch.inference_mode():
            x = self._prepare(pixels_bchw)
            return m.forward_head(m.forward_features(x), pre_logits=True)  # type: ignore[no-any-return]
