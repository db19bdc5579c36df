"""Train a grid of SAEs on one pass over an activation cache (paper §3, Table 1 defaults).

Every batch is read once and feeds every SAE of the grid. Each step: the family's training step (sparse
kernels for TopK/BatchTopK), optional AuxK loss on dead features (Gao et al. 2024), Adam, unit-norm
decoder rows. Checkpoints every ``checkpoint_every`` steps hold all SAEs, optimizer states, the sampler
step and the RNG state; a killed run resumes from the last one. After training, BatchTopK thresholds are
calibrated on held-out tokens (paper App. E) and each SAE is saved with :func:`save_sae`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, field_validator, model_validator

from visae.cache.whitening import Whitening, fold_into_sae, whitening_for, whitening_path
from visae.config import FrozenConfig
from visae.device import check_device_string, pick_device
from visae.errors import ConfigError
from visae.io import atomic_write_json, check_output_dir, remove_leftover_tmp, safe_join
from visae.sae.checkpoint import save_sae
from visae.sae.family import TrainableSAE
from visae.sae.registry import canonical_family, check_hparams, make_sae
from visae.sae.run_policy import (
    LOG_FILE,
    RUN_FILE,
    RUNTIME_SETTINGS,
    STATE_FILE,
    TrainStateMismatch,
    append_jsonl,
    check_previous_run,
    heldout,
    heldout_tail,
    note,
    resume,
    save_state,
    train_settings,
)

if TYPE_CHECKING:
    from visae.cache.sampler import TokenStream

__all__ = ["LOG_FILE", "RUNTIME_SETTINGS", "RUN_FILE", "STATE_FILE", "SAESpec", "TrainConfig",
           "TrainStateMismatch", "grid", "train_on_batches", "train_saes", "train_settings",
           "training_stream"]


class SAESpec(FrozenConfig):
    """One SAE configuration of a grid."""

    family: str = Field("batchtopk",
                        description="SAE family: batchtopk (paper default), topk, jumprelu, relu, "
                                    "matryoshka, gated, archetypal (or a plugin's)")
    expansion: float | None = Field(None, gt=0, allow_inf_nan=False,
                                    description="d_sae as a multiple of d_in (paper: 8, 16, 32)")
    d_sae: int | None = Field(None, ge=1, description="dictionary size; overrides expansion when given")
    k: int | None = Field(None, ge=1,
                          description="active features per token (TopK/BatchTopK/Matryoshka/Archetypal; "
                                      "the target L0 of JumpReLU and Gated)")
    hparams: dict[str, Any] = Field(default_factory=dict,
                                    description="family hyper-parameters (l1_coeff, bandwidth, kernel, "
                                                "widths, n_centroids, delta …)")
    seed: int | None = Field(None, description="initialisation seed of this SAE (default: the training seed "
                             "plus its position in the grid); several seeds of one configuration train on "
                             "the same pass and differ only in their initialisation")
    name: str | None = Field(None, description="output sub-folder; default '<family>_<expansion>x_k<k>', "
                             "with '_s<seed>' when a seed is given")

    @model_validator(mode="after")
    def _check(self) -> SAESpec:
        canonical_family(self.family)
        check_hparams(self.family, self.hparams)
        if self.name is not None and (self.name != Path(self.name).name or self.name in ("", ".", "..")):
            raise ValueError(f"name {self.name!r} must be a plain folder name (no '/', '..'): it is created "
                             "inside the output folder")
        if self.expansion is None and self.d_sae is None:
            raise ValueError("give expansion or d_sae")
        return self

    def folder_name(self, d_in: int) -> str:
        """The SAE's output folder name."""
        if self.name:
            return self.name
        width = f"{self.expansion:g}x" if self.expansion is not None else f"{self.d_sae}"
        name = f"{canonical_family(self.family)}_{width}" + (f"_k{self.k}" if self.k is not None else "")
        return name + (f"_s{self.seed}" if self.seed is not None else "")


class TrainConfig(FrozenConfig):
    """How SAEs are trained; defaults are the paper's Table 1 where it gives one."""

    lr: float = Field(1e-3, gt=0, allow_inf_nan=False, description="Adam learning rate (paper Table 1)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas, each in [0, 1)")
    batch_size: int = Field(8192, ge=1, description="patch tokens per step (paper Table 1)")
    epochs: int = Field(1, ge=1, description="passes over the cache (paper Table 1: 1)")
    steps: int | None = Field(None, ge=1,
                              description="stop after this many steps (default: the whole epochs)")
    seed: int = Field(42, description="seed of initialisation and the token sampler (paper Table 1)")
    dtype: Literal["fp32", "bf16"] = Field("fp32",
                                           description="encoder matmul precision: fp32, or bf16 (mixed "
                                                       "precision; fast on GPUs, very slow on CPUs without "
                                                       "bf16 matrix units)")
    device: str = Field("auto", description="torch device; auto = CUDA, then MPS, then CPU")
    checkpoint_every: int = Field(500, ge=1, description="steps between resumable checkpoints")
    log_every: int = Field(10, ge=1, description="steps between lines of train_log.jsonl")
    remove_parallel_grads: bool = Field(True, description="drop W_dec gradient parallel to its rows")
    dead_after_tokens: int = Field(10_000_000, ge=1,
                                   description="a feature is dead after this many tokens without firing")
    aux_k: int | None = Field(None, ge=1, description="AuxK: dead features used by the auxiliary loss "
                                                      "(Gao et al. 2024; e.g. 512); None disables it")
    aux_coeff: float = Field(1 / 32, ge=0, allow_inf_nan=False,
                             description="weight of the AuxK loss (Gao et al.: 1/32)")
    ortho_coeff: float = Field(0.0, ge=0, allow_inf_nan=False,
                               description="weight of OrtSAE's decoder-orthogonality penalty (any family; "
                                           "visae.sae.orthogonal); 0 turns it off")
    ortho_chunk: int = Field(4096, ge=2, description="atoms per random chunk of the orthogonality penalty")
    heldout: Literal["tail", "validation"] = Field(
        "tail", description="held-out tokens for the BatchTopK inference threshold (paper App. E): "
                            "'tail' = the last heldout_batches batches of the training stream, never trained "
                            "on; 'validation' = the first heldout_batches of validation_cache")
    heldout_batches: int = Field(8, ge=1, description="batches of held-out tokens for the threshold")
    validation_cache: str | None = Field(None, description="cache folder used when heldout='validation'")
    progress: bool = Field(True, description="show a tqdm progress bar")
    whiten: Literal["none", "pca", "zca"] = Field(
        "none", description="whiten the standardized tokens before training (App. C ablation): PCA or ZCA "
                            "fitted on the training cache and stored beside it; the saved SAE is folded back "
                            "to standardized inputs and reconstructions (visae.cache.whitening)")

    _device = field_validator("device")(check_device_string)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        bad = [b for b in self.betas if not 0 <= b < 1]
        if bad:
            raise ValueError(f"betas {list(self.betas)}: each Adam beta must lie in [0, 1), e.g. "
                             "betas=[0.9, 0.999]")
        if self.heldout == "validation" and not self.validation_cache:
            raise ValueError("heldout='validation' needs validation_cache")
        return self


def grid(family: str = "batchtopk", expansions: Iterable[float] = (8, 16, 32),
         ks: Iterable[int] = (64, 128, 192, 256), seeds: Iterable[int] | None = None,
         **hparams: Any) -> list[SAESpec]:
    """The paper's sweep (§3): every expansion × every K (× every seed, when seeds are given)."""
    seed_list: list[int | None] = list(seeds) if seeds is not None else [None]
    return [SAESpec(family=family, expansion=e, k=k, seed=s, hparams=dict(hparams))
            for e in expansions for k in ks for s in seed_list]


class _Trainee:
    """One SAE with its optimizer and running statistics."""

    def __init__(self, spec: SAESpec, sae: TrainableSAE, cfg: TrainConfig, name: str, init_seed: int) -> None:
        self.spec, self.sae, self.name, self.init_seed = spec, sae, name, init_seed
        self.opt = torch.optim.Adam(sae.optimizer_groups(cfg.lr), lr=cfg.lr, betas=cfg.betas)
        self.since_fired_f = torch.zeros(sae.d_sae, dtype=torch.int64, device=sae.W_enc.device)
        self.sum_l0 = 0.0
        self.n_steps = 0

    def state(self) -> dict[str, Any]:
        return {"model": self.sae.state_dict(), "opt": self.opt.state_dict(),
                "since_fired": self.since_fired_f,
                "sum_l0": self.sum_l0, "n_steps": self.n_steps}

    def load(self, st: dict[str, Any]) -> None:
        self.sae.load_state_dict(st["model"])
        self.opt.load_state_dict(st["opt"])
        self.since_fired_f.copy_(st["since_fired"])
        self.sum_l0, self.n_steps = float(st["sum_l0"]), int(st["n_steps"])


def _aux_k_loss(t: _Trainee, x_bd: torch.Tensor, residual_bd: torch.Tensor, dead_f: torch.Tensor,
                aux_k: int, coeff: float) -> float:
    """AuxK (Gao et al. 2024): reconstruct the residual from the top ``aux_k`` dead features."""
    dead_idx = dead_f.nonzero().squeeze(1)
    if dead_idx.numel() == 0 or coeff == 0:
        return 0.0
    sae = t.sae
    pre = (x_bd - sae.b_dec) @ sae.W_enc[:, dead_idx] + sae.b_enc[dead_idx]
    vals, idx = torch.topk(pre, min(aux_k, dead_idx.numel()), dim=1)
    vals = torch.relu(vals)
    atoms = sae.decoder_atoms()  # a family whose W_dec is computed (Archetypal) trains through its atoms
    recon = torch.einsum("bk,bkd->bd", vals, atoms[dead_idx][idx])
    loss = coeff * (recon - residual_bd).pow(2).sum(1).mean()
    loss.backward()
    return float(loss)


def train_on_batches(saes: list[tuple[str, TrainableSAE]], batches: Iterator[torch.Tensor], cfg: TrainConfig,
                     out_dir: Path | None = None, start_step: int = 0, total_steps: int | None = None,
                     trainees: list[_Trainee] | None = None, extra_state: dict[str, Any] | None = None,
                     ) -> list[_Trainee]:
    """The core loop: every batch of ``batches`` (``[B, D]``, normalized) feeds every SAE.

    Writes ``train_log.jsonl`` and resumable checkpoints into ``out_dir`` when given.
    """
    device = (trainees[0].sae if trainees else saes[0][1]).W_enc.device
    compute_dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
    if trainees is None:
        # SAEs handed in ready-made were initialised by the caller: the training seed stands for them
        trainees = [_Trainee(SAESpec(family=s.family, d_sae=s.d_sae, k=s.k), s, cfg, n, cfg.seed)
                    for n, s in saes]
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
    step = start_step
    t0 = time.perf_counter()
    for t in trainees:
        t.sae.train()
    for x_bd in batches:
        x_bd = x_bd.to(device, non_blocking=True).float()
        stats = [_step_trainee(t, x_bd, cfg, compute_dtype) for t in trainees]
        step += 1
        if bar is not None:
            first = stats[0]
            bar.set_postfix(loss=f"{first['loss']:.3g}", fvu=f"{first['fvu']:.3f}", l0=f"{first['l0']:.1f}")
            bar.update(1)
        if out_dir is not None and (step % cfg.log_every == 0 or step == 1):
            # the dead counts are read only for a logged row (on a GPU each is a host sync per SAE)
            row: dict[str, Any] = {"step": step, "tokens": step * x_bd.shape[0]}
            for t, st in zip(trainees, stats, strict=True):
                row[t.name] = {**st, "dead": int((t.since_fired_f >= cfg.dead_after_tokens).sum())}
            row["elapsed_s"] = time.perf_counter() - t0
            append_jsonl(out_dir / LOG_FILE, row)
        if out_dir is not None and step % cfg.checkpoint_every == 0:
            save_state(out_dir, step, trainees, extra_state or {})
        if total_steps is not None and step >= total_steps:
            break
    if bar is not None:
        bar.close()
    return trainees


def _step_trainee(t: _Trainee, x_bd: torch.Tensor, cfg: TrainConfig, compute_dtype: torch.dtype,
                  ) -> dict[str, float]:
    """One training step of one SAE of the group on the shared batch; returns its loss, FVU, L0, AuxK."""
    want_aux = False
    if cfg.aux_k is not None:
        dead_f = t.since_fired_f >= cfg.dead_after_tokens
        want_aux = bool(dead_f.any())
    res = t.sae.training_step(x_bd, compute_dtype, keep_residual=want_aux)
    aux = 0.0
    if want_aux and res.residual_bd is not None and cfg.aux_k is not None:
        aux = _aux_k_loss(t, x_bd, res.residual_bd, dead_f, cfg.aux_k, cfg.aux_coeff)
    ortho = 0.0
    if cfg.ortho_coeff > 0:
        from visae.sae.orthogonal import orthogonality_penalty

        penalty = cfg.ortho_coeff * orthogonality_penalty(t.sae.decoder_atoms(), cfg.ortho_chunk)
        penalty.backward()
        ortho = float(penalty.detach())
    if cfg.remove_parallel_grads:
        t.sae.remove_parallel_grad()
    t.opt.step()
    t.opt.zero_grad(set_to_none=True)
    t.sae.after_step()
    t.since_fired_f.add_(x_bd.shape[0])
    t.since_fired_f.masked_fill_(res.fired_f, 0)  # not a boolean index: no host sync on a GPU
    t.sum_l0 += res.l0
    t.n_steps += 1
    stats = {"loss": res.loss, "fvu": res.fvu, "l0": res.l0, "aux": aux}
    return {**stats, "ortho": ortho} if cfg.ortho_coeff > 0 else stats


def train_saes(cache: Any, configs: list[SAESpec] | SAESpec, out_dir: Path | str,
               train_config: TrainConfig | None = None, force: bool = False) -> list[Path]:
    """:func:`_train_saes` holding the writer lock of ``out_dir`` (``.lock``, as 'visae cache' does): a second
    run into the same folder is refused while the first is alive."""
    from visae.cache.lock import writer_lock

    out = check_output_dir(out_dir)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with writer_lock(out, "visae train"):
            return _train_saes(cache, configs, out, train_config, force)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a refused run leaves nothing behind
        raise


def _train_saes(cache: Any, configs: list[SAESpec] | SAESpec, out_dir: Path | str,
                train_config: TrainConfig | None = None, force: bool = False) -> list[Path]:
    """Train every SAE of ``configs`` on one pass over ``cache``; return their checkpoint folders.

    ``cache`` is an :class:`~visae.cache.reader.ActivationCache`, a path to one, or a list of either:
    several caches of one backbone layer are read as one shuffled stream (normalized with their pooled
    statistics). Resumes from ``<out_dir>/train_state.pt`` when present. A folder holding SAEs (or a run)
    trained on another cache or with other settings is refused with an OutputConflictError naming the
    difference, unless ``force`` (then the old run's state and log are discarded and its SAEs replaced).
    """
    cfg = train_config or TrainConfig()
    cache_obj = training_stream(cache)
    specs = [configs] if isinstance(configs, SAESpec) else list(configs)
    if not specs:
        raise ConfigError("train_saes: no SAE configurations given")
    device = pick_device(cfg.device)
    out = check_output_dir(out_dir)
    d_in = cache_obj.d_model
    names = [s.folder_name(d_in) for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"train_saes: two SAE configurations share an output name: {names}")
    one = len(cache_obj.caches) == 1
    provenance = {"cache": cache_obj.paths[0] if one else cache_obj.paths,
                  "cache_hash": cache_obj.hashes[0] if one else cache_obj.hashes, "seed": cfg.seed,
                  "backbone": cache_obj.caches[0].manifest.backbone,
                  "layer": cache_obj.caches[0].manifest.layer,
                  "train_config": cfg.to_dict()}
    run_record = {**{k: v for k, v in provenance.items() if k != "train_config"},
                  "settings": train_settings(cfg.to_dict())}
    check_previous_run(out, run_record, dict(zip(names, specs, strict=True)), d_in, force)
    trainees = _make_trainees(cache_obj, specs, names, cfg, device)
    n_per_epoch = cache_obj.n_batches(cfg.batch_size, 1)
    n_tail = heldout_tail(cfg, n_per_epoch)
    trainable = n_per_epoch * cfg.epochs - n_tail
    total = min(cfg.steps, trainable) if cfg.steps else trainable
    if cfg.steps and cfg.steps > trainable:
        note(f"train: steps={cfg.steps} is more than the cache holds ({trainable} batches of "
              f"{cfg.batch_size} tokens in {cfg.epochs} epoch(s), {n_tail} held out); capped at "
              f"{trainable} steps. Raise epochs (--set epochs=N) to train longer")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RUN_FILE, run_record)
    remove_leftover_tmp(out, recursive=True)  # partial files of a killed run: never read, only reclaimed
    start = resume(out, trainees, names)
    whitening = whitening_for(cache_obj, cfg.whiten)
    if whitening is not None:
        provenance["whitening"] = {"kind": whitening.kind, "path": str(whitening_path(cache_obj, cfg.whiten)),
                                   "n_tokens": whitening.n_tokens}
    if start < total:
        # ship fp16 tokens, normalize on the device (half the copy, no CPU pass)
        on_gpu = device.type != "cpu"
        sampled = cache_obj.token_sampler(cfg.batch_size, seed=cfg.seed, normalize=True, epochs=cfg.epochs,
                                          start_step=start, half=on_gpu)
        batches = cache_obj.finish_on(sampled, device) if on_gpu else sampled
        if whitening is not None:
            batches = (whitening.apply(b) for b in batches)
        try:
            train_on_batches([], batches, cfg, out_dir=out, start_step=start, total_steps=total,
                             trainees=trainees)
        finally:
            sampled.close()  # type: ignore[attr-defined]  # ends the sampler's reader thread
        save_state(out, total, trainees, {})
    heldout_desc, held = heldout(cache_obj, cfg, trainable)
    held = [h.to(device) for h in held]  # one copy for the whole group
    if whitening is not None:
        held = [whitening.apply(h) for h in held]
    paths = [_finish_trainee(t, out, cfg, device, (heldout_desc, held), provenance, whitening)
             for t in trainees]
    atomic_write_json(out / "trained.json", {"saes": [str(p) for p in paths]})
    return paths


def _make_trainees(cache_obj: TokenStream, specs: list[SAESpec], names: list[str], cfg: TrainConfig,
                   device: torch.device) -> list[_Trainee]:
    """A fresh SAE per spec, seeded (the spec's seed, else ``cfg.seed`` + its index) and normalized with
    the stream's statistics."""
    mean_d = torch.as_tensor(cache_obj.mean_d, dtype=torch.float32)
    trainees = []
    for i, (spec, name) in enumerate(zip(specs, names, strict=True)):
        init_seed = spec.seed if spec.seed is not None else cfg.seed + i
        torch.manual_seed(init_seed)
        sae = make_sae(spec.family, cache_obj.d_model,
                       expansion=spec.expansion if spec.d_sae is None else None,
                       d_sae=spec.d_sae, k=spec.k, **spec.hparams).to(device)
        sae.set_normalization(mean_d, cache_obj.std)
        trainees.append(_Trainee(spec, sae, cfg, name, init_seed))
    return trainees


def _finish_trainee(t: _Trainee, out: Path, cfg: TrainConfig, device: torch.device,
                    held_out: tuple[str, list[torch.Tensor]], provenance: dict[str, Any],
                    whitening: Whitening | None = None) -> Path:
    """Calibrate (the family's :meth:`~TrainableSAE.calibrate` hook) and measure the inference L0 of a
    trained SAE on the held-out tokens, save it under ``out`` with its provenance and log its final row;
    return its folder."""
    heldout_desc, held = held_out
    t.sae.eval()
    info: dict[str, Any] = {"train_l0": t.sum_l0 / max(t.n_steps, 1), "steps": t.n_steps,
                            "tokens": t.n_steps * cfg.batch_size, "heldout": heldout_desc,
                            "init_seed": t.init_seed}
    x_held = [h.to(device) for h in held]
    calibration = t.sae.calibrate(x_held)
    if calibration is not None:
        info["calibration"] = calibration
    info["inference_l0"] = (sum(t.sae.inference_l0(h) * h.shape[0] for h in x_held)
                            / max(sum(h.shape[0] for h in x_held), 1))
    if whitening is not None:  # codes unchanged; inputs and reconstructions back in the standardized space
        fold_into_sae(t.sae, whitening)
    path = save_sae(t.sae, safe_join(out, t.name), provenance={**provenance, **info})
    append_jsonl(out / LOG_FILE, {"final": t.name, **info})
    return path


def training_stream(cache: Any) -> TokenStream:
    """A :class:`~visae.cache.sampler.TokenStream` over ``cache``: a cache, a path, or a list of them."""
    from visae.cache.reader import ActivationCache, open_cache
    from visae.cache.sampler import TokenStream

    if isinstance(cache, TokenStream):
        return cache
    items = list(cache) if isinstance(cache, list | tuple) else [cache]
    if not items:
        raise ConfigError("train_saes: no training cache given")
    return TokenStream([c if isinstance(c, ActivationCache) else open_cache(c) for c in items])


