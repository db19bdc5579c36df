"""The trainer's run policy: what a training folder holds and how a run resumes, is refused or is
replaced, and which tokens are held out for calibration. The training loop itself is in
:mod:`visae.sae.train`.

Files of a training folder: ``train_state.pt`` (every SAE, optimizer state, step and RNG state at the last
checkpoint), ``train_log.jsonl`` (one row per logged step, cut back to the checkpoint on resume) and
``run.json`` (the cache hash and shaping settings; a rerun with others is refused unless forced).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from visae.errors import CheckpointError, ConfigError, OutputConflictError
from visae.io import atomic_write_text, atomic_write_with
from visae.sae.registry import canonical_family

if TYPE_CHECKING:
    from visae.sae.train import SAESpec, TrainConfig, _Trainee

STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.jsonl"
RUN_FILE = "run.json"
"""What a training folder was trained on and with (cache hash, settings); a rerun with others is refused."""
RUNTIME_SETTINGS = ("device", "checkpoint_every", "log_every", "progress")
"""TrainConfig fields that do not change the trained SAEs (a rerun may change them freely)."""


class TrainStateMismatch(ConfigError):
    """The output folder holds the resumable state of a different set of SAEs (another grid)."""


def train_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields that shape the trained SAEs (:data:`RUNTIME_SETTINGS` left out)."""
    return {k: v for k, v in config.items() if k not in RUNTIME_SETTINGS}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key old → new`` for each key both hold with different values (keys only one side has are skipped,
    so a setting added in a later visae version does not count as a difference)."""
    def norm(v: Any) -> Any:
        return json.loads(json.dumps(v, default=str))

    return [f"{k} {norm(old[k])!r} → {norm(new[k])!r}" for k in sorted(set(old) & set(new))
            if norm(old[k]) != norm(new[k])]


def previous_runs(out: Path, specs: dict[str, SAESpec], d_in: int) -> list[tuple[Path, dict[str, Any]]]:
    """What ``out`` says it was trained with: its run.json and each SAE's config.yaml provenance."""
    import yaml

    found: list[tuple[Path, dict[str, Any]]] = []
    run = out / RUN_FILE
    if run.is_file():
        with contextlib.suppress(OSError, ValueError):
            found.append((run, json.loads(run.read_text(encoding="utf-8"))))
    for name, spec in specs.items():
        path = out / name / "config.yaml"
        try:
            cfg = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, yaml.YAMLError):
            cfg = None
        if not isinstance(cfg, dict):
            continue
        prov: dict[str, Any] = cfg["provenance"] if isinstance(cfg.get("provenance"), dict) else {}
        record: dict[str, Any] = {k: prov[k] for k in ("cache_hash", "cache") if k in prov}
        if isinstance(prov.get("train_config"), dict):
            record["settings"] = train_settings(prov["train_config"])
        d_sae = spec.d_sae if spec.d_sae is not None else round((spec.expansion or 0) * d_in)
        record["sae"] = ({"family": cfg.get("family"), "d_sae": cfg.get("d_sae"), "k": cfg.get("k")},
                         {"family": canonical_family(spec.family), "d_sae": d_sae, "k": spec.k})
        found.append((path, record))
    return found


def check_previous_run(out: Path, new: dict[str, Any], specs: dict[str, SAESpec], d_in: int,
                        force: bool) -> None:
    """Refuse to train into a folder whose SAEs or run used another cache or other settings (unless
    ``force``)."""
    for where, old in previous_runs(out, specs, d_in):
        diffs = []
        if old.get("cache_hash") not in (None, new["cache_hash"]):
            diffs.append(f"cache hash {old['cache_hash']} ({old.get('cache', '?')}) → {new['cache_hash']} "
                         f"({new['cache']})")
        if isinstance(old.get("settings"), dict):
            diffs += differences(old["settings"], new["settings"])
        if "sae" in old:
            diffs += [f"SAE {d}" for d in differences(*old["sae"])]
        if not diffs:
            continue
        if not force:
            raise OutputConflictError(
                f"{out}: holds an SAE run trained on another cache or with other settings ({where}: "
                f"{'; '.join(diffs)}); pass --force (force=True) to replace it, or train into another "
                "--out folder")
        for leftover in (STATE_FILE, LOG_FILE, RUN_FILE, "trained.json"):
            (out / leftover).unlink(missing_ok=True)
        return


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_log(path: Path, last_step: int) -> None:
    """Keep the log rows up to the checkpoint a run resumes from, so no step is logged twice after a kill
    (rows written after the last checkpoint, a torn last line, and 'final' rows are dropped)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= last_step:
            keep.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in keep))


def save_state(out_dir: Path, step: int, trainees: list[_Trainee], extra: dict[str, Any]) -> None:
    state = {"step": step, "trainees": {t.name: t.state() for t in trainees},
             "rng": torch.get_rng_state(), **extra}
    atomic_write_with(out_dir / STATE_FILE, lambda p: torch.save(state, p))


def load_state(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]
    except Exception as e:  # unpickling refused, truncated or not a torch file
        raise CheckpointError(f"{path}: unreadable training state ({type(e).__name__}: {str(e)[:200]}); "
                              "delete it to restart training from step 0") from None


def resume(out: Path, trainees: list[_Trainee], names: list[str]) -> int:
    """Load the saved training state of ``out`` into ``trainees`` (and the RNG); return its step (0 when
    none). The log keeps only the rows up to that step."""
    state = load_state(out)
    truncate_log(out / LOG_FILE, int(state["step"]) if state is not None else 0)
    if state is None:
        return 0
    saved = state["trainees"]
    if set(saved) != set(names):
        raise TrainStateMismatch(f"{out / STATE_FILE}: the saved run trained {sorted(saved)}, "
                                 f"not {sorted(names)}; use another --out folder")
    for t in trainees:
        try:
            t.load(saved[t.name])
        except (ValueError, RuntimeError, KeyError) as e:  # another model or optimizer layout
            raise CheckpointError(
                f"{out / STATE_FILE}: the saved state of {t.name} does not fit this version's "
                f"{t.spec.family} SAE ({type(e).__name__}: {str(e).splitlines()[0][:160]}), e.g. a state "
                f"written by an older visae; finish the run with that version, or delete {out / STATE_FILE} "
                "to train this folder again from step 0 (or train into another --out folder)") from None
    torch.set_rng_state(state["rng"])
    return int(state["step"])


def heldout_tail(cfg: TrainConfig, n_per_epoch: int) -> int:
    """Batches held out at the end of the stream: ``heldout_batches``, fewer on a cache too small for them."""
    if cfg.heldout != "tail":
        return 0
    if cfg.epochs > 1 or cfg.heldout_batches < n_per_epoch:
        return cfg.heldout_batches
    if n_per_epoch < 2:
        raise ConfigError(f"the cache has only {n_per_epoch} batch(es) of {cfg.batch_size} tokens: nothing "
                          "to train on after holding out the threshold's batches; use a smaller batch_size "
                          "(--set batch_size=…), a bigger cache, or heldout='validation' with "
                          "validation_cache")
    tail = max(1, n_per_epoch // 4)
    note(f"train: the cache has only {n_per_epoch} batches of {cfg.batch_size} tokens; holding out {tail} "
          f"(not heldout_batches={cfg.heldout_batches}) for the threshold, training on the other "
          f"{n_per_epoch - tail}")
    return tail


def heldout(cache: Any, cfg: TrainConfig, trainable: int) -> tuple[str, list[torch.Tensor]]:
    """The held-out batches for threshold calibration and inference L0 (normalized with ``cache``'s stats)."""
    if cfg.heldout == "validation":
        from visae.cache.reader import open_cache

        val = open_cache(str(cfg.validation_cache))
        it = val.token_sampler(cfg.batch_size, seed=cfg.seed, normalize=False, drop_last=False)
        held = [cache.normalize(b) for b in itertools.islice(it, cfg.heldout_batches)]
        return f"validation cache {cfg.validation_cache} ({sum(len(h) for h in held)} tokens)", held
    it = cache.token_sampler(cfg.batch_size, seed=cfg.seed, normalize=True, epochs=cfg.epochs,
                             start_step=trainable)
    held = list(itertools.islice(it, cfg.heldout_batches))
    return (f"tail: the last {len(held)} batches of the training stream (steps {trainable}+), "
            f"never trained on"), held


log = logging.getLogger("visae.sae.train")


def note(msg: str) -> None:
    """A training message for the user (through ``logging``; the CLI shows it on stderr)."""
    log.warning(msg)
