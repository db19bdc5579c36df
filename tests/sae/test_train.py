"""Training end to end on a planted dictionary: recovery, FVU, BatchTopK inference L0, resume, log."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from visae.sae.batchtopk import BatchTopKSAE, calibrate_threshold
from visae.sae.checkpoint import load_sae
from visae.sae.registry import make_sae
from visae.sae.testing import best_cosine, planted_dictionary
from visae.sae.train import STATE_FILE, SAESpec, TrainConfig, grid, train_on_batches, train_saes


def _fvu(sae: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        r = sae(x).recon_nd
    return float((r - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


@pytest.mark.slow
def test_planted_dictionary_recovered_from_cache(planted_cache: tuple[Path, torch.Tensor],
                                                 tmp_path: Path) -> None:
    cache_path, atoms = planted_cache
    cfg = TrainConfig(lr=3e-3, batch_size=256, epochs=24, heldout_batches=2, progress=False, log_every=50)
    specs = [SAESpec(family="batchtopk", expansion=4, k=3), SAESpec(family="topk", expansion=4, k=3)]
    paths = train_saes(cache_path, specs, tmp_path / "out", cfg)
    assert [p.name for p in paths] == ["batchtopk_4x_k3", "topk_4x_k3"]
    from visae.cache.reader import open_cache

    cache = open_cache(cache_path)
    x = torch.cat([b for _, b in ((i, a.reshape(-1, 24)) for i, a in cache.iter_images(100, normalize=True))])
    for p in paths:
        sae = load_sae(p)
        # The decoder lives in normalized space: compare directions (normalization is a shift and a scale).
        assert best_cosine(atoms, sae.W_dec.detach()) >= 0.9, p
        assert _fvu(sae, x) < 0.2, p
    bt = load_sae(paths[0])
    assert isinstance(bt, BatchTopKSAE) and bt.calibrated
    prov = __import__("yaml").safe_load((paths[0] / "config.yaml").read_text())["provenance"]
    assert prov["train_l0"] == pytest.approx(3.0, rel=0.01)
    assert abs(prov["inference_l0"] - 3.0) <= 0.3
    torch.testing.assert_close(bt.act_mean, torch.as_tensor(cache.mean_d))
    rows = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 1 and {"loss", "fvu", "l0", "dead"} <= set(rows[0]["batchtopk_4x_k3"])


@pytest.mark.slow
def test_batchtopk_inference_l0_within_10pct_on_heldout() -> None:
    torch.manual_seed(0)
    x, _ = planted_dictionary(30000, 24, 48, 4, seed=3)
    x = x / x.std()
    train, calib, test = x[:20000], x[20000:25000], x[25000:]
    sae = make_sae("batchtopk", 24, expansion=4, k=4)
    cfg = TrainConfig(lr=3e-3, batch_size=500, progress=False)
    train_on_batches([("a", sae)], (train[i:i + 500] for _ in range(3) for i in range(0, 20000, 500)), cfg)
    assert isinstance(sae, BatchTopKSAE)
    info = calibrate_threshold(sae, calib.split(1000))
    assert info["inference_l0"] == pytest.approx(4.0)
    sae.eval()
    l0_test = sae.inference_l0(test)
    assert abs(l0_test - 4) <= 0.4
    # Batch independence: one token encodes the same alone as inside its batch.
    torch.testing.assert_close(sae.encode(test[:1]), sae.encode(test[:64])[:1])


def test_resume_after_kill_matches_uninterrupted(planted_cache: tuple[Path, torch.Tensor], tmp_path: Path,
                                                 interrupt_training: Callable[[int], None]) -> None:
    cache_path, _ = planted_cache
    cfg = TrainConfig(batch_size=512, steps=8, checkpoint_every=3, heldout_batches=1, progress=False)
    spec = [SAESpec(family="batchtopk", expansion=2, k=2)]
    ref = load_sae(train_saes(cache_path, spec, tmp_path / "ref", cfg)[0])

    interrupt_training(7)  # stop after the step-6 checkpoint
    with pytest.raises(KeyboardInterrupt):
        train_saes(cache_path, spec, tmp_path / "run", cfg)
    assert (tmp_path / "run" / STATE_FILE).is_file()
    resumed = load_sae(train_saes(cache_path, spec, tmp_path / "run", cfg)[0])
    for name, t in ref.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], t, msg=name)


def test_grid_is_paper_sweep() -> None:
    specs = grid()
    assert len(specs) == 12 and {s.expansion for s in specs} == {8, 16, 32}
    assert {s.k for s in specs} == {64, 128, 192, 256}


def test_seeds_train_in_one_pass_and_match_a_single_seed_run(planted_cache: tuple[Path, torch.Tensor],
                                                              tmp_path: Path) -> None:
    cache_path, _ = planted_cache
    cfg = TrainConfig(lr=3e-3, batch_size=256, steps=6, heldout_batches=2, progress=False)
    specs = grid("topk", expansions=[2], ks=[3], seeds=[7, 8])
    assert [s.folder_name(24) for s in specs] == ["topk_2x_k3_s7", "topk_2x_k3_s8"]
    both = train_saes(cache_path, specs, tmp_path / "both", cfg)
    alone = train_saes(cache_path, [specs[1]], tmp_path / "alone", cfg)
    w7, w8 = (load_sae(p).W_enc.detach() for p in both)
    assert not torch.allclose(w7, w8)  # different initialisations
    # the seed alone fixes an SAE: trained beside another seed or on its own, the weights are the same
    torch.testing.assert_close(w8, load_sae(alone[0]).W_enc.detach(), rtol=0, atol=0)
    prov = __import__("yaml").safe_load((both[1] / "config.yaml").read_text())["provenance"]
    assert prov.get("init_seed") == 8


def test_a_small_cache_adapts_the_heldout_and_says_steps_were_capped(
        planted_cache: tuple[Path, torch.Tensor], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """400 images × 16 patches = 6400 tokens = 6 batches of 1024: the default 8 held-out batches cannot
    fit."""
    from visae.cache.reader import open_cache

    cfg = TrainConfig(batch_size=1024, steps=1000, progress=False, device="cpu")
    assert cfg.heldout_batches == 8
    paths = train_saes(open_cache(planted_cache[0]), [SAESpec(family="batchtopk", expansion=2, k=3)],
                       tmp_path, cfg)
    err = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "holding out 1 (not heldout_batches=8)" in err and "training on the other 5" in err
    assert "steps=1000 is more than the cache holds" in err and "capped at 5 steps" in err
    import yaml

    prov = yaml.safe_load((paths[0] / "config.yaml").read_text())["provenance"]
    assert prov["steps"] == 5 and "the last 1 batches" in prov["heldout"]


def test_a_cache_of_one_batch_names_the_settings(planted_cache: tuple[Path, torch.Tensor],
                                                 tmp_path: Path) -> None:
    from visae.cache.reader import open_cache
    from visae.errors import ConfigError

    cfg = TrainConfig(batch_size=6400, progress=False, device="cpu")
    with pytest.raises(ConfigError,
                       match=r"only 1 batch\(es\) of 6400 tokens.*batch_size.*heldout='validation'"):
        train_saes(open_cache(planted_cache[0]), [SAESpec(family="batchtopk", expansion=2, k=3)],
                   tmp_path, cfg)


def test_a_train_state_of_another_optimizer_layout_is_one_error(planted_cache: tuple[Path, torch.Tensor],
                                                                tmp_path: Path,
                                                                interrupt_training: Callable[[int], None]
                                                                ) -> None:
    from visae.errors import CheckpointError

    cache_path, _ = planted_cache
    cfg = TrainConfig(batch_size=512, steps=4, checkpoint_every=2, heldout_batches=1, progress=False)
    spec = [SAESpec(family="batchtopk", expansion=2, k=2)]
    interrupt_training(3)  # stop after the step-2 checkpoint
    with pytest.raises(KeyboardInterrupt):
        train_saes(cache_path, spec, tmp_path / "run", cfg)
    state = torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)
    for st in state["trainees"].values():  # as an older version's one group where there are now two
        st["opt"]["param_groups"].append(dict(st["opt"]["param_groups"][0], params=[]))
    torch.save(state, tmp_path / "run" / STATE_FILE)
    with pytest.raises(CheckpointError, match="does not fit this version's batchtopk SAE") as err:
        train_saes(cache_path, spec, tmp_path / "run", cfg)
    assert "\n" not in str(err.value) and "delete" in str(err.value)
    (tmp_path / "run" / STATE_FILE).unlink()  # the advice works
    assert train_saes(cache_path, spec, tmp_path / "run", cfg)
