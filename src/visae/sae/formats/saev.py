"""saev checkpoints: ``sae.pt`` holding one JSON header line, then a ``torch.save``'d state dict.

saev changed what the same tensors mean several times; each header schema is read the way the saev version
that wrote it computed its forward pass (tested against files written by those versions' own ``dump``):

- no schema (saev 0.1.0): the header is the bare config (``d_vit``, ``exp_factor``); ReLU; the encoder
  sees ``x − b_dec`` (as ours does).
- schema 1: ``cls`` names the activation (``Relu``, ``TopK``, ``BatchTopK``); the encoder changed inside
  this schema (see below); BatchTopK kept the top-k of the whole batch (refused).
- schema 2: ``cfg.activation = {cls, params}``; the encoder sees ``x`` (``b_dec`` is folded into
  ``b_enc``); BatchTopK changed inside the schema (whole batch, then per sample): refused.
- schema 3: as 2; BatchTopK is a per-sample top-k (read as our TopK).
- schema 4: as 3, but BatchTopK changed inside the schema: with an ``activation.threshold`` buffer it is read
  as in schema 5, without one it is refused.
- schema 5: BatchTopK at inference is a JumpReLU at the scalar ``activation.threshold`` buffer (≤ 0: ReLU).

Schema-1 files with a non-zero ``b_dec`` are refused: saev stopped subtracting ``b_dec`` in the encoder on
2025-07-31 (commit e7ca004) without changing the header, so the file does not say which forward it had.
Matryoshka SAEs (saev's ``matryoshka`` objective) are plain SAEs whose decoder rows are ordered by prefix;
the full reconstruction is the last prefix's, which is what loads here.

Mapping another activation is one entry in :data:`ACTIVATIONS`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from visae.errors import CheckpointError
from visae.sae.base import SAE
from visae.sae.formats import CheckpointFormat, first_byte, pt_file
from visae.sae.formats.common import build_sae, get_tensor, safe_torch_load, state_dict_of

SCHEMAS = (None, 1, 2, 3, 4, 5)
"""Header schemas read (None: saev 0.1.0's bare config line)."""


@dataclass(frozen=True)
class Activation:
    """How one saev activation class maps onto a visae family."""

    family: str
    needs_k: bool = False
    threshold: Callable[[int | None, dict[str, torch.Tensor], Path], float | None] | None = None
    """``threshold(schema, state, where)``: the inference threshold a threshold family needs (or raises)."""


def _batchtopk_threshold(schema: int | None, state: dict[str, torch.Tensor], where: Path) -> float | None:
    """saev's BatchTopK at inference: batch-coupled in schemas 1–2 (refused), per-sample top-k in schema 3
    (None: read as TopK), a JumpReLU at the ``activation.threshold`` buffer from then on."""
    buf = state.get("activation.threshold")
    if buf is not None:
        return float(buf.reshape(-1)[0])
    if schema is not None and schema >= 5:
        raise CheckpointError(f"{where}: saev schema {schema} BatchTopK without the 'activation.threshold' "
                              "buffer its inference needs; save it again with saev's own dump")
    if schema in (1, 2):
        raise CheckpointError(
            f"{where}: header field 'schema' = {schema} with cfg.activation.cls = 'BatchTopK': this saev's "
            "BatchTopK kept the top_k largest values of the whole batch at inference (until commit a4c2c60, "
            "a per-sample top-k after, same schema), which no per-token SAE reproduces. Load it with the "
            "saev version that wrote it; save it again with a current saev (schema 5 stores a threshold)")
    if schema == 4:
        raise CheckpointError(
            f"{where}: header field 'schema' = 4 with cfg.activation.cls = 'BatchTopK' and no "
            "'activation.threshold' buffer: saev changed this activation inside schema 4 (per-sample top-k "
            "until commit b94e5ea, batch-coupled top-k after), so the file does not say what its forward "
            "pass was. Load it with the saev version that wrote it, and save it again with a current saev "
            "(schema 5 stores the threshold)")
    return None


ACTIVATIONS: dict[str, Activation] = {
    "Relu": Activation("relu"),
    "TopK": Activation("topk", needs_k=True),
    "BatchTopK": Activation("batchtopk", needs_k=True, threshold=_batchtopk_threshold),
}
"""saev activation class → visae family. The families helper's entries (e.g. a Matryoshka or Gated class,
should saev add one) go here."""


def detect(path: Path) -> Path | None:
    """``sae.pt`` (or another ``.pt``) whose first byte opens a JSON header."""
    pt_path = pt_file(path)
    return pt_path if pt_path is not None and first_byte(pt_path) == b"{" else None


def read_header(pt_path: Path) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the bytes of the state dict after it."""
    raw = pt_path.read_bytes()
    newline = raw.find(b"\n")
    try:
        header = json.loads(raw[:newline].decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{pt_path}: the first line is not a saev JSON header: {e}") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{pt_path}: the saev header line is not a JSON object")
    return header, raw[newline + 1:]


def _config(pt_path: Path, header: dict[str, Any]) -> tuple[int | None, str, dict[str, Any], dict[str, Any]]:
    """``(schema, activation class, activation params, cfg)`` of any schema."""
    if "schema" not in header:  # saev 0.1.0: the bare config, ReLU
        return None, "Relu", {}, header
    schema = header["schema"]
    if schema not in SCHEMAS:
        raise CheckpointError(f"{pt_path}: header field 'schema' = {schema!r} is not a saev schema this "
                              f"visae reads (known: none, {', '.join(str(s) for s in SCHEMAS[1:])})")
    cfg = header.get("cfg")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{pt_path}: header field 'cfg' is missing or not an object")
    act = cfg.get("activation")
    if isinstance(act, dict) and "cls" in act:
        params = act.get("params") or {}
        return schema, str(act["cls"]), dict(params) if isinstance(params, dict) else {}, cfg
    if schema == 1:  # format 1A: the config class is the activation
        return schema, str(header.get("cls", "Relu")), {"top_k": cfg.get("top_k")}, cfg
    raise CheckpointError(f"{pt_path}: header field 'cfg.activation' must be {{'cls': ..., 'params': ...}} "
                          f"in schema {schema}")


def load(pt_path: Path) -> SAE:
    """One of our families from a saev file, computing what the saev version that wrote it computed."""
    header, body = read_header(pt_path)
    schema, cls, params, cfg = _config(pt_path, header)
    activation = ACTIVATIONS.get(cls)
    if activation is None:
        raise CheckpointError(f"{pt_path}: header field cfg.activation.cls = {cls!r} has no visae family "
                              f"(supported: {', '.join(ACTIVATIONS)})")
    state = state_dict_of(safe_torch_load(body, pt_path), pt_path)
    W_enc, W_dec = (get_tensor(state, (n,), pt_path).float() for n in ("W_enc", "W_dec"))
    b_enc, b_dec = (get_tensor(state, (n,), pt_path).float() for n in ("b_enc", "b_dec"))
    d_in, d_sae = W_enc.shape
    d_cfg = cfg.get("d_model", cfg.get("d_vit"))
    if d_cfg is not None and int(d_cfg) != d_in:
        raise CheckpointError(f"{pt_path}: W_enc has d_in={d_in} but the header's cfg says d_model={d_cfg}")
    if W_dec.shape != (d_sae, d_in) or b_enc.shape != (d_sae,) or b_dec.shape != (d_in,):
        raise CheckpointError(f"{pt_path}: W_dec {tuple(W_dec.shape)}, b_enc {tuple(b_enc.shape)}, b_dec "
                              f"{tuple(b_dec.shape)} do not fit W_enc {tuple(W_enc.shape)}")
    if schema == 1 and bool(b_dec.any()):
        raise CheckpointError(f"{pt_path}: header field 'schema' = 1 with a non-zero b_dec: saev stopped "
                              "subtracting b_dec before its encoder inside schema 1 (commit e7ca004, "
                              f"2025-07-31) and the header (commit={header.get('commit')!r}) does not say "
                              "which forward pass wrote it. Load it with that saev version and save it again "
                              "with a current saev (schema 5)")
    k = params.get("top_k")
    if activation.needs_k and not isinstance(k, int):
        raise CheckpointError(f"{pt_path}: header field cfg.activation.params.top_k is missing for {cls}")
    threshold = activation.threshold(schema, state, pt_path) if activation.threshold else None
    family = activation.family if threshold is not None or activation.threshold is None else "topk"
    sae = build_sae(pt_path, family, d_in, d_sae, k if activation.needs_k else None, {})
    # saev 0.1.0 encodes x − b_dec like us; every schema since encodes x: fold b_dec into b_enc exactly.
    encodes_x = schema is not None and schema >= 2
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.b_enc.copy_(b_enc + b_dec @ W_enc if encodes_x else b_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(b_dec)
        if threshold is not None:
            sae.threshold.fill_(threshold)  # type: ignore[operator]
    sae.hparams.update(source=f"saev schema {schema if schema is not None else 'none (0.1.0)'}",
                       normalization="identity (raw activations)")
    return sae


FORMAT = CheckpointFormat("saev", ("sae.pt",), detect, load, "saev (sae.pt with a JSON header line)")
