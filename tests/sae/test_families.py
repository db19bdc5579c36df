"""Matryoshka, Gated and Archetypal families and the orthogonality penalty against independent answers:
autograd through dense references (float64), the reference libraries' own forward passes and losses on
the same weights (SAELens for Matryoshka and Gated, overcomplete for RA-SAE), and a planted dictionary."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

from visae.errors import ConfigError
from visae.metrics.encode import inference_rule, sparse_encode
from visae.sae.archetypal import ArchetypalSAE, kmeans
from visae.sae.gated import GatedSAE
from visae.sae.matryoshka import MatryoshkaSAE, check_widths, matryoshka_step
from visae.sae.orthogonal import orthogonality_penalty
from visae.sae.registry import SAE_FAMILIES, make_sae
from visae.sae.testing import best_cosine, planted_dictionary
from visae.sae.train import TrainConfig, train_on_batches


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def _saelens_step_input(x: torch.Tensor, coefficients: dict[str, float] | None = None):  # type: ignore[no-untyped-def]
    from sae_lens.saes.sae import TrainStepInput

    return TrainStepInput(sae_in=x, coefficients=coefficients or {}, dead_neuron_mask=None,
                          n_training_steps=0, is_logging_step=False)


# --- registry and hooks ---------------------------------------------------------------------------------
def test_new_families_are_registered_with_their_hooks() -> None:
    assert {"matryoshka", "gated", "archetypal"} <= set(SAE_FAMILIES.names())
    assert SAE_FAMILIES.canonical("ra-sae") == "archetypal"
    assert SAE_FAMILIES.canonical("matryoshka_batchtopk") == "matryoshka"
    m = make_sae("matryoshka", 8, d_sae=32, k=3)
    assert m.widths == [2, 4, 8, 16, 32]  # default: F/16 … F
    assert inference_rule(m) is not None and inference_rule(m).k == 3  # type: ignore[union-attr]  # uncalibrated
    assert inference_rule(make_sae("gated", 8, d_sae=32)) is None  # not a threshold rule: dense path
    assert inference_rule(make_sae("archetypal", 8, d_sae=32, k=3)).k == 3  # type: ignore[union-attr]


def test_a_plugin_that_changes_encode_takes_the_dense_path() -> None:
    class Shifted(MatryoshkaSAE):
        def encode(self, x_nd: torch.Tensor) -> torch.Tensor:
            return super().encode(x_nd + 1)

    class Declared(Shifted):
        def inference_rule(self):  # type: ignore[no-untyped-def]
            return None

    assert inference_rule(Shifted(8, 16, k=2)) is None
    assert inference_rule(Declared(8, 16, k=2)) is None


def test_matryoshka_widths_are_checked() -> None:
    assert check_widths([4, 8], 32) == [4, 8, 32]  # d_sae appended, as SAELens does
    for bad in ([8, 4], [0, 32], [4, 64], ["a"]):
        with pytest.raises(ConfigError, match="widths"):
            check_widths(bad, 32)  # type: ignore[arg-type]


# --- Matryoshka -------------------------------------------------------------------------------------------
def _matryoshka(d: int = 8, f: int = 32, k: int = 3, widths: list[int] | None = None) -> MatryoshkaSAE:
    torch.manual_seed(0)
    sae = MatryoshkaSAE(d, f, k=k, widths=widths or [4, 12]).double()
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.3)
    return sae


@pytest.mark.parametrize(("k", "widths"), [(3, [4, 12]), (1, [1, 2, 3, 31])])  # the second: empty groups
def test_matryoshka_sparse_step_equals_autograd_of_the_dense_loss(k: int, widths: list[int]) -> None:
    sae = _matryoshka(k=k, widths=widths)
    with torch.no_grad():
        sae.b_enc[:3] -= 5.0  # the first features rarely fire: some prefix groups hold no entry
    x = torch.randn(96, 8, dtype=torch.float64)
    res = matryoshka_step(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, k, sae.widths, keep_residual=True)
    ours = _grads(sae)
    sae.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        losses = sae.prefix_losses(x)
    sum(losses).backward()  # type: ignore[union-attr]
    ref = _grads(sae)
    assert res.loss == pytest.approx(float(sum(losses)), rel=1e-12)
    assert res.mse * 8 == pytest.approx(float(losses[-1]), rel=1e-12)
    assert res.l0 == pytest.approx(k)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-10, atol=1e-12, msg=name)
    codes = sae.train_forward_codes(x).detach()
    torch.testing.assert_close(res.residual_bd, x - sae.decode(codes).detach())


def test_matryoshka_loss_and_gradients_equal_saelens() -> None:
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )

    ours = _matryoshka()
    cfg = MatryoshkaBatchTopKTrainingSAEConfig(d_in=8, d_sae=32, k=3, matryoshka_widths=[4, 12, 32],
                                               rescale_acts_by_decoder_norm=False, dtype="float64")
    ref = MatryoshkaBatchTopKTrainingSAE(cfg)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(ref, name).copy_(getattr(ours, name))
    x = torch.randn(128, 8, dtype=torch.float64)
    out = ref.training_forward_pass(_saelens_step_input(x))
    out.loss.backward()
    res = ours.training_step(x)
    assert res.loss == pytest.approx(float(out.loss), rel=1e-12)
    got = _grads(ours)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(got[name], getattr(ref, name).grad, rtol=1e-10, atol=1e-12, msg=name)
    # inference: SAELens saves the BatchTopK threshold as a JumpReLU threshold; ours is the same rule
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig

    ours.threshold.fill_(0.7)
    jr = JumpReLUSAE(JumpReLUSAEConfig(d_in=8, d_sae=32, dtype="float64"))
    state = {k: v.detach() for k, v in ref.state_dict().items() if k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    jr.load_state_dict({**state, "threshold": torch.full((32,), 0.7, dtype=torch.float64)})
    ours.eval()
    xt = torch.randn(50, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(xt), jr.encode(xt))
        torch.testing.assert_close(ours(xt).recon_nd, jr(xt))
        torch.testing.assert_close(sparse_encode(ours, xt).to_dense(), jr.encode(xt))


def test_matryoshka_prefix_is_the_nested_dictionary() -> None:
    sae = _matryoshka().eval()
    sae.threshold.fill_(0.5)
    sub = sae.with_options(prefix=12)
    assert sub.d_sae == 12 and sub.widths == [4, 12] and sub.hparams["prefix_of"] == 32
    x = torch.randn(40, 8, dtype=torch.float64)
    with torch.no_grad():
        full = sae.encode(x)
        torch.testing.assert_close(sub.encode(x), full[:, :12])
        torch.testing.assert_close(sub(x).recon_nd, full[:, :12] @ sae.W_dec[:12] + sae.b_dec)
    assert sae.with_options(prefix=32) is sae and sae.with_options() is sae
    with pytest.raises(ConfigError, match=r"sae\.prefix=5.*\[4, 12, 32\]"):
        sae.with_options(prefix=5)
    with pytest.raises(ConfigError, match=r"sae\.width"):
        sae.with_options(width=4)
    with pytest.raises(ConfigError, match="no evaluation option"):
        make_sae("topk", 8, d_sae=16, k=2).with_options(prefix=4)


# --- Gated -----------------------------------------------------------------------------------------------
def _saelens_gated(d: int = 8, f: int = 32, training: bool = False):  # type: ignore[no-untyped-def]
    from sae_lens.saes.gated_sae import GatedSAE as LensGated
    from sae_lens.saes.gated_sae import GatedSAEConfig, GatedTrainingSAE, GatedTrainingSAEConfig

    torch.manual_seed(3)
    ref = (GatedTrainingSAE(GatedTrainingSAEConfig(d_in=d, d_sae=f, dtype="float64", l1_coefficient=0.5))
           if training else LensGated(GatedSAEConfig(d_in=d, d_sae=f, dtype="float64")))
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.4)
        ref.W_dec.div_(ref.W_dec.norm(dim=1, keepdim=True))  # visae keeps unit-norm decoder rows
    return ref


def test_gated_forward_equals_saelens_on_its_weights() -> None:
    ref = _saelens_gated()
    state = {k: v.detach() for k, v in ref.state_dict().items()}
    assert {"b_gate", "r_mag", "b_mag"} <= set(state)
    ours = GatedSAE.from_tensors(state).double().eval()
    x = torch.randn(64, 8, dtype=torch.float64)
    with torch.no_grad():
        codes = ours.encode(x)
        assert 0 < float((codes > 0).float().mean()) < 1  # the gate closes some features, not all
        torch.testing.assert_close(codes, ref.encode(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours(x).recon_nd, ref(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(sparse_encode(ours, x).to_dense(), codes)  # the dense evaluation path


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_gated_loss_and_gradients_equal_saelens(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import visae.sae.gated

    monkeypatch.setattr(visae.sae.gated, "SPARSE_DENSITY", 1.0 if path == "sparse" else -1.0)
    ref = _saelens_gated(training=True)
    ours = GatedSAE.from_tensors({k: v.detach() for k, v in ref.state_dict().items()}, l1_coeff=0.5,
                                 detach_aux_decoder=False).double()
    x = torch.randn(64, 8, dtype=torch.float64)
    out = ref.training_forward_pass(_saelens_step_input(x, {"l1": 0.5}))
    out.loss.backward()
    res = ours.training_step(x)
    assert res.loss == pytest.approx(float(out.loss), rel=1e-12)
    got = _grads(ours)
    for theirs, mine in (("W_enc", "W_enc"), ("b_gate", "b_enc"), ("r_mag", "r_mag"), ("b_mag", "b_mag"),
                         ("W_dec", "W_dec"), ("b_dec", "b_dec")):
        torch.testing.assert_close(got[mine], getattr(ref, theirs).grad, rtol=1e-10, atol=1e-12, msg=mine)
    # the paper's frozen decoder in the auxiliary term: same loss, the decoder gradient lacks that term
    state = {k: v.detach() for k, v in ref.state_dict().items()}
    frozen = GatedSAE.from_tensors(state, l1_coeff=0.5).double()
    assert frozen.training_step(x).loss == pytest.approx(res.loss, rel=1e-12)
    assert not torch.allclose(frozen.W_dec.grad, got["W_dec"])  # type: ignore[arg-type]
    torch.testing.assert_close(frozen.W_enc.grad, got["W_enc"])


def test_gated_takes_the_sparse_path_once_few_gates_are_open(monkeypatch: pytest.MonkeyPatch) -> None:
    import visae.sae.gated

    torch.manual_seed(0)
    sae = GatedSAE(16, 256, k=4).double()
    x = torch.randn(512, 16, dtype=torch.float64)
    with torch.no_grad():  # about 8 of 256 gates open per token: under SPARSE_DENSITY
        sae.b_enc.copy_(-torch.kthvalue((x - sae.b_dec) @ sae.W_enc, 512 - 16, dim=0).values)
    calls: list[int] = []
    real = visae.sae.gated.gated_sparse_step
    monkeypatch.setattr(visae.sae.gated, "gated_sparse_step",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    res = sae.training_step(x)
    assert calls and 6 < res.l0 < 10
    sparse = {n: p.grad.clone() for n, p in sae.named_parameters()}  # type: ignore[union-attr]
    sae.zero_grad()
    sae.l1_coeff.fill_(1.0)  # the controller moved it
    monkeypatch.setattr(visae.sae.gated, "SPARSE_DENSITY", -1.0)
    dense = sae.training_step(x)
    assert dense.loss == pytest.approx(res.loss, rel=1e-12) and dense.l0 == res.l0
    for n, p in sae.named_parameters():
        torch.testing.assert_close(sparse[n], p.grad, rtol=1e-10, atol=1e-12, msg=n)


def test_gated_controller_steers_l0_towards_k() -> None:
    torch.manual_seed(0)
    sae = GatedSAE(8, 32, k=2, l1_coeff=1e-3)
    before = float(sae.l1_coeff)
    sae.training_step(torch.randn(64, 8))
    assert float(sae.l1_coeff) > before  # L0 far above 2: λ grows


# --- Archetypal ------------------------------------------------------------------------------------------
def _overcomplete():  # type: ignore[no-untyped-def]
    import matplotlib
    import matplotlib.cm

    if not hasattr(matplotlib.cm, "get_cmap"):
        matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap  # overcomplete 0.3.0 imports it
    import overcomplete.sae as oc

    return oc


def _ra_pair(d: int = 8, f: int = 24, n_c: int = 16, k: int = 3):  # type: ignore[no-untyped-def]
    oc = _overcomplete()
    torch.manual_seed(5)
    points = torch.randn(n_c, d)
    ref = oc.RATopKSAE(d, f, points=points, top_k=k, delta=0.5)
    with torch.no_grad():
        ref.dictionary.W.copy_(torch.randn(f, n_c).abs() + 0.05 * torch.randn(f, n_c))  # not yet stochastic
        ref.dictionary.Relax.normal_(0, 0.5)  # some rows beyond δ
        ref.dictionary.multiplier.fill_(0.2)
        ref.encoder.final_block[0].weight.normal_(0, 0.5)
        ref.encoder.final_block[0].bias.normal_(0, 0.1)
    raw = {"W": ref.dictionary.W.detach().clone(), "relax": ref.dictionary.Relax.detach().clone(),
           "multiplier": ref.dictionary.multiplier.detach().clone(), "C": points.clone(),
           "W_enc": ref.encoder.final_block[0].weight.detach().T.clone(),
           "b_enc": ref.encoder.final_block[0].bias.detach().clone(), "b_dec": torch.zeros(d)}
    ours = ArchetypalSAE.from_tensors(raw, k=k, delta=0.5)  # n_centroids from C, W_dec fused
    assert ours.C.shape[0] == n_c and bool(ours.centroids_ready)
    return ref, ours


def test_archetypal_forward_equals_overcomplete_rasae() -> None:
    ref, ours = _ra_pair()
    x = torch.randn(40, 8)
    ref.train()
    ref(x)  # overcomplete projects W and Λ at the start of a training forward pass
    ref.eval()  # … and fuses the dictionary
    _, codes_ref, recon_ref = ref(x)
    ours.eval()
    with torch.no_grad():
        out = ours(x)
    torch.testing.assert_close(ours.W_dec, ref.get_dictionary(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.codes_nf, codes_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.recon_nd, recon_ref, rtol=1e-5, atol=1e-5)
    w = ours.W.detach()
    assert bool((w >= 0).all()) and torch.allclose(w.sum(1), torch.ones(24), atol=1e-5)
    assert float(ours.relax.detach().norm(dim=1).max()) <= 0.5 + 1e-5


def test_archetypal_gradients_equal_overcomplete_through_autograd() -> None:
    ref, ours = _ra_pair()
    x = torch.randn(40, 8)
    ref.train()
    _, _, recon = ref(x)
    (recon - x).pow(2).sum(1).mean().backward()
    res = ours.training_step(x)
    assert res.loss == pytest.approx(float((recon - x).pow(2).sum(1).mean()), rel=1e-5)
    got = _grads(ours)
    pairs = (("W", ref.dictionary.W), ("relax", ref.dictionary.Relax),
             ("multiplier", ref.dictionary.multiplier),
             ("W_enc", ref.encoder.final_block[0].weight), ("b_enc", ref.encoder.final_block[0].bias))
    for name, p in pairs:
        want = p.grad.T if name == "W_enc" else p.grad
        torch.testing.assert_close(got[name], want, rtol=1e-4, atol=1e-5, msg=name)


def test_kmeans_finds_separated_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])
    found = kmeans(x, 3, iters=20, generator=torch.Generator().manual_seed(1))
    dist = torch.cdist(centres, found).min(1).values
    assert float(dist.max()) < 0.2


# --- orthogonality penalty ---------------------------------------------------------------------------
def test_orthogonality_penalty_closed_form_and_gradcheck() -> None:
    eye = torch.eye(4, dtype=torch.float64)
    assert float(orthogonality_penalty(eye)) == 0.0
    w = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    # cos² pairs: (0,1) ½, (0,2) 0, (1,2) ½ → per-atom maxima ½, ½, ½
    assert float(orthogonality_penalty(w)) == pytest.approx(0.5)
    w = torch.randn(10, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: orthogonality_penalty(t, chunk_size=4, generator=torch.Generator().manual_seed(2)), (w,))


def test_orthogonality_option_lowers_decoder_similarity() -> None:
    x, _ = planted_dictionary(4096, 12, 24, 2, seed=4)

    def run(coeff: float) -> float:
        torch.manual_seed(0)
        sae = make_sae("topk", 12, d_sae=48, k=2)
        cfg = TrainConfig(lr=3e-3, batch_size=256, ortho_coeff=coeff, progress=False)
        batches = (x[i:i + 256] for _ in range(3) for i in range(0, 4096, 256))
        train_on_batches([("s", sae)], batches, cfg)
        w = sae.W_dec.detach()
        cos = (w @ w.T).fill_diagonal_(0).abs()
        return float(cos.max(1).values.mean())

    assert run(1.0) < run(0.0) - 0.05


# --- planted dictionary ------------------------------------------------------------------------------------
# (family, k, hparams, width, lr, epochs, FVU bound): Gated learns its gate through the L1 and auxiliary
# terms only and needs more steps; RA-SAE's atoms are held in the centroids' hull (a looser FVU).
PLANTED = [("matryoshka", 2, {"widths": [16, 48]}, 96, 3e-3, 8, 0.2),
           ("gated", None, {"l1_coeff": 3.0}, 64, 1e-2, 24, 0.2),
           ("gated", 2, {"l1_coeff": 3.0}, 64, 1e-2, 24, 0.2),  # λ steered to the target L0 2
           ("archetypal", 2, {"n_centroids": 256, "delta": 1.0}, 96, 3e-3, 8, 0.25)]


@pytest.mark.parametrize(("family", "k", "hparams", "width", "lr", "epochs", "max_fvu"), PLANTED)
def test_planted_dictionary_is_recovered(family: str, k: int | None, hparams: dict[str, object], width: int,
                                         lr: float, epochs: int, max_fvu: float) -> None:
    x, atoms = planted_dictionary(16384, 16, 32, 2, seed=7)
    torch.manual_seed(1)
    sae = make_sae(family, 16, d_sae=width, k=k, **hparams)
    cfg = TrainConfig(lr=lr, batch_size=512, progress=False)
    batches = (x[i:i + 512] for _ in range(epochs) for i in range(0, 16384, 512))
    train_on_batches([("s", sae)], batches, cfg)
    sae.eval()
    sae.calibrate([x[:4096]])
    assert best_cosine(atoms, sae.W_dec.detach()) >= 0.9
    with torch.no_grad():
        out = sae(x[:4096])
    fvu = float((out.recon_nd - x[:4096]).pow(2).sum() / (x[:4096] - x[:4096].mean(0)).pow(2).sum())
    assert fvu < max_fvu
    l0 = float((out.codes_nf > 0).sum(1).float().mean())
    assert l0 < 4  # sparse: near the planted 2
    if family == "gated" and k is not None:
        assert abs(l0 - k) <= 0.5


def test_from_tensors_refuses_missing_and_misshapen_tensors() -> None:
    sae = GatedSAE(4, 8)
    state = {k: v for k, v in sae.state_dict().items() if k in ("W_enc", "b_enc", "W_dec", "b_dec", "r_mag")}
    with pytest.raises(ConfigError, match=r"missing \['b_mag'\]"):
        GatedSAE.from_tensors(state)
    with pytest.raises(ConfigError, match="'r_mag' has shape"):
        GatedSAE.from_tensors({**state, "b_mag": torch.zeros(8), "r_mag": torch.zeros(3)})
    with pytest.raises(ConfigError, match="W_enc"):
        GatedSAE.from_tensors({})
    assert list(itertools.islice(SAE_FAMILIES.names(), 0, None))


@pytest.mark.parametrize("family", ["matryoshka", "gated", "archetypal"])
def test_checkpoint_round_trip(family: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from visae.sae.checkpoint import load_sae, save_sae

    torch.manual_seed(2)
    x = torch.randn(256, 8)
    sae = make_sae(family, 8, d_sae=32, k=None if family == "gated" else 3,
                   **({"n_centroids": 20} if family == "archetypal" else {}))
    sae.training_step(x)
    sae.after_step()
    sae.calibrate([x])
    sae.eval()
    back = load_sae(save_sae(sae, tmp_path / family))
    assert type(back) is type(sae) and back.hparams == sae.hparams
    with torch.no_grad():
        torch.testing.assert_close(back(x).recon_nd, sae(x).recon_nd)
        torch.testing.assert_close(back.encode(x), sae.encode(x))


def test_a_matryoshka_threshold_that_disagrees_with_config_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from visae.errors import CheckpointError
    from visae.sae.checkpoint import load_sae, save_sae

    sae = make_sae("matryoshka", 8, d_sae=32, k=3)
    sae.threshold.fill_(0.25)
    folder = save_sae(sae, tmp_path / "m")
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    assert cfg["threshold"] == 0.25 and cfg["hparams"]["widths"] == [2, 4, 8, 16, 32]
    cfg["threshold"] = 0.5
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match="threshold"):
        load_sae(folder)


def test_a_misspelt_family_option_is_refused_with_the_options() -> None:
    from pydantic import ValidationError

    from visae.sae.train import SAESpec

    with pytest.raises((ConfigError, ValidationError), match=r"widht.*matryoshka.*widths"):
        SAESpec(family="matryoshka", expansion=2, k=2, hparams={"widht": [4]})
    assert SAESpec(family="gated", expansion=2, hparams={"l1_coeff": 2.0}).hparams == {"l1_coeff": 2.0}


def test_gated_codes_function_gradcheck() -> None:
    from visae.sae.gated import GatedCodesFn

    torch.manual_seed(4)
    shared = torch.randn(12, 7, dtype=torch.float64, requires_grad=True)
    params = [torch.randn(7, dtype=torch.float64, requires_grad=True) * 0.5 for _ in range(3)]
    params = [p.detach().requires_grad_(True) for p in params]
    assert torch.autograd.gradcheck(lambda s, bg, rm, bm: GatedCodesFn.apply(s, bg, rm, bm),
                                    (shared, *params))
    # and it equals the plain expressions
    codes, gate_act = GatedCodesFn.apply(shared, *params)
    gate = shared + params[0]
    mag = shared * params[1].exp() + params[2]
    torch.testing.assert_close(codes, (gate > 0).double() * torch.relu(mag))
    torch.testing.assert_close(gate_act, torch.relu(gate))


def test_study_validation_names_a_misspelt_family_option(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from visae.study.config import load_study_config
    from visae.study.testing import TINY_STUDY
    from visae.study.validate import validate_study

    path = tmp_path / "t.yaml"
    block = {"name": "m", "family": "matryoshka", "expansions": [2], "ks": [4], "hparams": {"widht": [3]}}
    path.write_text(yaml.safe_dump({**TINY_STUDY, "saes": [block]}))
    assert validate_study(load_study_config(path, validate=False)) == [
        "saes[0].hparams: widht is not a setting of the matryoshka family "
        "(it takes: threshold_momentum, widths)"]


def test_gated_saelens_without_decoder_bias_on_input_folds_exactly() -> None:
    from sae_lens.saes.gated_sae import GatedSAE as LensGated
    from sae_lens.saes.gated_sae import GatedSAEConfig

    from visae.sae.gated import fold_decoder_bias

    torch.manual_seed(6)
    ref = LensGated(GatedSAEConfig(d_in=8, d_sae=32, dtype="float64", apply_b_dec_to_input=False))
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.4)
    ours = GatedSAE.from_tensors(fold_decoder_bias({k: v.detach() for k, v in ref.state_dict().items()}))
    x = torch.randn(64, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), ref.encode(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours(x).recon_nd, ref(x), rtol=1e-12, atol=1e-12)


def test_new_families_resume_bitwise_after_a_kill(planted_cache, tmp_path, interrupt_training) -> None:  # type: ignore[no-untyped-def]
    from visae.sae.checkpoint import load_sae
    from visae.sae.train import STATE_FILE, SAESpec, train_saes

    cache_path, _ = planted_cache
    cfg = TrainConfig(batch_size=512, steps=8, checkpoint_every=3, heldout_batches=1, progress=False,
                      ortho_coeff=0.1, ortho_chunk=16)
    specs = [SAESpec(family="matryoshka", expansion=2, k=2, hparams={"widths": [8, 24]}),
             SAESpec(family="gated", expansion=2, k=3), SAESpec(family="archetypal", expansion=2, k=2)]
    refs = [load_sae(p) for p in train_saes(cache_path, specs, tmp_path / "ref", cfg)]
    interrupt_training(7)  # die after the step-6 checkpoint
    with pytest.raises(KeyboardInterrupt):
        train_saes(cache_path, specs, tmp_path / "run", cfg)
    assert (tmp_path / "run" / STATE_FILE).is_file()
    for ref, path in zip(refs, train_saes(cache_path, specs, tmp_path / "run", cfg), strict=True):
        got = load_sae(path).state_dict()
        for name, t in ref.state_dict().items():
            assert torch.equal(got[name], t), (path.name, name)


def test_archetypal_first_reconstruction_has_the_data_scale() -> None:
    """The atoms are data centroids (norm ≈ the tokens'), and k of them are summed: unscaled, the first
    reconstruction of clustered tokens was many times too large (FVU ~10⁴ on DINOv2's). After the k-means
    initialisation the encoder's scale is the least-squares one, so the first FVU is below 1."""
    from visae.sae.registry import make_sae

    torch.manual_seed(0)
    centers = torch.randn(8, 32) * 4
    x = centers[torch.randint(0, 8, (512,))] + 0.5 * torch.randn(512, 32)
    x = x - x.mean(0)
    sae = make_sae("archetypal", 32, d_sae=64, k=8, n_centroids=16)
    sae.init_centroids(x)
    with torch.no_grad():
        recon = sae.decode(sae.encode(x))
    fvu = float((x - recon).pow(2).sum() / x.pow(2).sum())
    assert fvu < 1.0, fvu


def test_archetypal_first_adam_steps_do_not_spike_the_fvu() -> None:
    """Adam's first steps move every coordinate by about lr. With the least-squares scale in the encoder
    (entries ~10⁻³) they multiplied the codes, and with W at the full rate they moved a quarter of each
    atom's mass onto other centroids: the training FVU on clustered tokens jumped 6× at step 1 (10.4 from
    0.19 on the demo cache). The scale now lives in the multiplier and W's rate is lr / √n_centroids."""
    import visae.sae.train as tr
    from visae.sae.train import SAESpec

    torch.manual_seed(0)
    d, f, n_c, k, b = 64, 256, 128, 8, 512
    centers = torch.randn(32, d) * 3
    cfg = TrainConfig(batch_size=b, steps=20, progress=False)
    sae = make_sae("archetypal", d, d_sae=f, k=k, n_centroids=n_c)
    t = tr._Trainee(SAESpec(family="archetypal", d_sae=f, k=k), sae, cfg, "ra", 0)
    fvu = [tr._step_trainee(t, centers[torch.randint(0, 32, (b,))] + 0.5 * torch.randn(b, d), cfg,
                            torch.float32)["fvu"] for _ in range(20)]
    assert fvu[0] < 0.5, fvu
    assert max(fvu) <= 1.25 * fvu[0], [round(v, 3) for v in fvu]
    assert {g["lr"] for g in t.opt.param_groups} == {cfg.lr, cfg.lr / n_c**0.5}


def test_archetypal_decoder_atoms_reuse_the_steps_product_with_the_same_gradients() -> None:
    """Right after a step, :meth:`decoder_atoms` (the orthogonality penalty's input) reuses the step's
    ``W C``; its gradients equal autograd through the dictionary; once a parameter moved it recomputes."""
    _, ours = _ra_pair()
    x = torch.randn(40, 8)
    ours.training_step(x)
    ours.zero_grad(set_to_none=True)
    reused = ours.decoder_atoms()
    assert reused.grad_fn is not None and "FusedDictionary" in type(reused.grad_fn).__name__
    w = torch.randn_like(reused)
    (reused * w).sum().backward()
    got = {n: p.grad.clone() for n, p in ours.named_parameters() if p.grad is not None}
    ours.zero_grad(set_to_none=True)
    (ours.dictionary() * w).sum().backward()
    for name in ("W", "relax", "multiplier"):
        torch.testing.assert_close(got[name], getattr(ours, name).grad, rtol=1e-5, atol=1e-6, msg=name)
    with torch.no_grad():
        ours.relax.mul_(0.5)  # e.g. the optimizer step
    fresh = ours.decoder_atoms()
    assert "FusedDictionary" not in type(fresh.grad_fn).__name__
    torch.testing.assert_close(fresh, ours.dictionary())


def test_auxk_trains_the_archetypal_dictionary_through_its_atoms() -> None:
    """AuxK's decode goes through ``decoder_atoms()``: for Archetypal (``W_dec`` a buffer) its gradient
    reaches ``W``, ``Λ`` and ``m`` and equals autograd through the explicit dictionary."""
    import visae.sae.train as tr
    from visae.sae.train import SAESpec

    _, ours = _ra_pair()
    x = torch.randn(40, 8)
    cfg = TrainConfig(batch_size=40, steps=1, progress=False)
    t = tr._Trainee(SAESpec(family="archetypal", d_sae=24, k=3), ours, cfg, "ra", 0)
    ours.training_step(x)
    ours.zero_grad(set_to_none=True)
    dead_f = torch.zeros(24, dtype=torch.bool)
    dead_f[::3] = True
    residual = torch.randn(40, 8)
    tr._aux_k_loss(t, x, residual, dead_f, aux_k=4, coeff=0.5)
    got = {n: p.grad.clone() for n, p in ours.named_parameters() if p.grad is not None}
    assert {"W", "relax", "multiplier"} <= set(got)
    ours.zero_grad(set_to_none=True)
    dead_idx = dead_f.nonzero().squeeze(1)
    pre = (x - ours.b_dec) @ ours.W_enc[:, dead_idx] + ours.b_enc[dead_idx]
    vals, idx = torch.topk(pre, 4, dim=1)
    recon = torch.einsum("bk,bkd->bd", torch.relu(vals), ours.dictionary()[dead_idx][idx])
    (0.5 * (recon - residual).pow(2).sum(1).mean()).backward()
    for name in ("W", "relax", "multiplier", "W_enc", "b_enc"):
        torch.testing.assert_close(got[name], getattr(ours, name).grad, rtol=1e-5, atol=1e-6, msg=name)
