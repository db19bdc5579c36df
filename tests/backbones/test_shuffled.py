"""``shuffled:<backbone>``: the permutation null of Moran's I, checked against its known expectation −1/(P −
1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from visae.backbones.registry import backbone_entry, control_of, evaluator_for, family_of, load_backbone
from visae.backbones.shuffled import CONTROL, ShuffledBackbone, patch_permutation
from visae.cache.testing import TinyViTBackbone
from visae.errors import ConfigError
from visae.metrics.encode import EncodedBatch
from visae.metrics.m1_spatial import M1Config, null_expectation
from visae.metrics.raw_spatial import RawConfig


def test_wrapper_permutes_patches_only_one_permutation_per_image() -> None:
    inner = TinyViTBackbone(seed=0)
    bb = ShuffledBackbone(inner, seed=3)
    x = torch.randn(3, 3, 32, 32)
    got, ref = bb.block_outputs(x, [0, 1]), inner.block_outputs(x, [0, 1])
    perms = bb.permutations(x)
    for layer in (0, 1):
        assert torch.equal(got[layer][:, 0], ref[layer][:, 0])  # the CLS token stays in place
        for b in range(3):
            # same permutation at every layer
            assert torch.equal(got[layer][b, 1:], ref[layer][b, 1:][perms[b]])
    assert not torch.equal(got[1][:, 1:], ref[1][:, 1:])
    assert sorted(perms[0].tolist()) == list(range(16)) and not torch.equal(perms[0], perms[1])
    # a function of the seed and the image only: not of the batch it arrives in
    assert torch.equal(bb.permutations(x[2:])[0], perms[2])
    assert not torch.equal(patch_permutation(x[0], 16, seed=4), perms[0])
    assert torch.equal(bb.embed(x), inner.embed(x))
    assert torch.equal(bb.patch_tokens(x, 1), got[1][:, 1:])


def test_wrapper_identity_and_registry() -> None:
    bb = ShuffledBackbone(TinyViTBackbone(seed=0), seed=3)
    assert bb.weights_id.endswith("+shuffle-seed3") and bb.control == CONTROL
    assert bb.preprocessing_spec()["shuffle_patches"]["seed"] == 3
    assert bb.layout == bb.inner.layout and bb.d_model == 32 and bb.n_blocks == 2
    entry = backbone_entry("shuffled:dinov2-s14-offline")
    assert entry is not None and entry.family == "shuffled" and entry.control == CONTROL
    assert family_of("shuffled:dinov2-s14-offline") == "shuffled"
    assert evaluator_for("shuffled:dinov2-s14-offline") == evaluator_for("dinov2-s14-offline")
    assert control_of("dinov2-s14-offline") is None
    assert control_of("random-vit-s14") is not None and control_of("shuffled:random-vit-s14") == CONTROL
    with pytest.raises(ConfigError, match="name the backbone to wrap"):
        load_backbone("shuffled:")
    import visae.study.testing  # noqa: F401  (registers tiny-vit-a)

    wrapped = load_backbone("shuffled:tiny-vit-a", device="cpu")
    assert isinstance(wrapped, ShuffledBackbone) and wrapped.name == "shuffled:tiny-vit-a"
    assert wrapped.control == CONTROL and wrapped.layout.n_patches == 16


NULL_DRAWS = 24


def _codes_batch(codes_npf: torch.Tensor, grid: tuple[int, int]) -> EncodedBatch:
    """An encoded group holding only codes (M1 reads nothing else)."""
    n, p, _ = codes_npf.shape
    empty = torch.zeros(n, p, 1)
    return EncodedBatch(np.arange(n), np.zeros(n, dtype=np.int64), empty, codes_npf, empty, grid)


def _null_draws(sae_dirs: list[Path], cache_dir: Path, m1_cfg: M1Config, raw_cfg: RawConfig,
                draws: int = NULL_DRAWS) -> tuple[np.ndarray, np.ndarray]:
    """The permutation distribution of each SAE's M1 (``[SAEs, draws]``) and of the raw statistic
    (``[draws]``).

    Each draw permutes every image's patches of ``cache_dir`` uniformly at random, so it is one sample
    of the statistic under the spatial-random null with the cache's own token vectors.
    """
    from visae.cache.reader import open_cache
    from visae.metrics.encode import encode_stream
    from visae.metrics.m1_spatial import compute_m1
    from visae.metrics.raw_spatial import compute_raw
    from visae.sae.checkpoint import load_sae

    cache = open_cache(cache_dir)
    grid = (cache.layout.grid_h, cache.layout.grid_w)
    acts = [a.float() for _, a in cache.iter_images(group_size=64, normalize=False)]
    codes = [[b.codes_npf.clone() for b in encode_stream(load_sae(d), cache, group_size=64)]
             for d in sae_dirs]

    def permuted(x_npd: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        perm = torch.stack([torch.randperm(x_npd.shape[1], generator=g) for _ in range(x_npd.shape[0])])
        return x_npd.gather(1, perm[:, :, None].expand_as(x_npd))

    m1 = np.zeros((len(sae_dirs), draws))
    raw = np.zeros(draws)
    for r in range(draws):
        for s, groups in enumerate(codes):
            g = torch.Generator().manual_seed(1000 + r)
            batches = [_codes_batch(permuted(c, g), grid) for c in groups]
            m1[s, r] = compute_m1(batches, groups[0].shape[-1], m1_cfg)[0].value
        g = torch.Generator().manual_seed(5000 + r)
        raw[r] = compute_raw([(permuted(a, g), grid) for a in acts], raw_cfg)[0].value
    return m1, raw


@pytest.mark.slow
def test_shuffled_backbone_is_the_permutation_null_of_m1(tmp_path: Path) -> None:
    """Raw diagnostic and every SAE's M1 on a shuffled cache sit at −1/(P − 1) within the permutation
    standard error; the same SAEs on the unshuffled cache sit far above it."""
    from visae.cache.writer import build_cache
    from visae.datasets.registry import open_source
    from visae.metrics.evaluate import evaluate
    from visae.sae.train import SAESpec, TrainConfig, train_saes

    pytest.importorskip("transformers")
    pytest.importorskip("skimage")
    torch.manual_seed(0)
    inner = load_backbone("random-vit-s14", device="cpu", image_size=98)  # 7×7 grid: P = 49
    source = open_source("offline:textures", split="all", max_images=150)
    settings = {"device": "cpu", "batch_size": 50, "num_workers": 0, "progress": False}
    plain = build_cache(inner, source, 3, tmp_path / "caches", **settings)
    shuffled = build_cache(ShuffledBackbone(inner), source, 3, tmp_path / "caches", **settings)
    specs = [SAESpec(family="batchtopk", expansion=2, k=8), SAESpec(family="topk", expansion=4, k=16),
             SAESpec(family="relu", expansion=2, k=16, hparams={"l1_coeff": 1e-3})]
    sae_dirs = train_saes(shuffled, specs, tmp_path / "saes",
                          TrainConfig(batch_size=512, device="cpu", progress=False,
                                      heldout_batches=2, seed=0))
    m1_cfg = M1Config(min_valid_images=20, write_features=False)
    raw_cfg = RawConfig(min_valid_images=20, write_features=False)
    configs = {"m1": m1_cfg, "raw": raw_cfg}
    null = null_expectation(49)
    m1_draws, raw_draws = _null_draws(sae_dirs, shuffled, m1_cfg, raw_cfg)
    for s, sae_dir in enumerate(sae_dirs):
        on_null = evaluate(sae_dir, shuffled, ["m1", "raw"], configs=configs, device="cpu")
        on_plain = evaluate(sae_dir, plain, ["m1"], configs={"m1": m1_cfg}, device="cpu")
        se = float(np.std(m1_draws[s], ddof=1))
        assert on_null["m1"].n_eval > 0 and se > 0
        # the permutation distribution is centred on the null: its mean over the draws is within 4 SE/sqrt(R)
        assert abs(m1_draws[s].mean() - null) < 4 * se / np.sqrt(NULL_DRAWS)
        assert abs(on_null["m1"].value - null) < 4 * se, (sae_dir.name, on_null["m1"].value, null, se)
        assert on_plain["m1"].value - null > 20 * se, (sae_dir.name, on_plain["m1"].value, null, se)
    raw_se = float(np.std(raw_draws, ddof=1))
    assert abs(raw_draws.mean() - null) < 4 * raw_se / np.sqrt(NULL_DRAWS)
    assert abs(on_null["raw"].value - null) < 4 * raw_se
    plain_raw = evaluate(sae_dirs[0], plain, ["raw"], configs={"raw": raw_cfg}, device="cpu")["raw"]
    assert plain_raw.value - null > 20 * raw_se
