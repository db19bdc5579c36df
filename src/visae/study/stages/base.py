"""What every stage shares: the ``Params`` base, the :class:`Stage` record, job construction and the way a
stage finds the activation cache a cache job wrote.

A stage module (``cache``, ``train`` … ``report``) defines ``Params`` (a pydantic model: the job's
parameters, which is also what enters the job id), a planning fragment that builds its jobs, and ``run``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from visae.config import FrozenConfig
from visae.errors import StudyError
from visae.study.job import Job, job_id
from visae.study.protocol import read_done

if TYPE_CHECKING:
    from visae.cache.reader import ActivationCache


class StageParams(FrozenConfig):
    """Base of every stage's ``Params``; fields named in ``omit_when_none`` leave the JSON form (and so the
    job id) when None, so that adding an optional parameter keeps existing ids."""

    omit_when_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in self.omit_when_none:
            if data.get(key) is None:
                data.pop(key, None)
        return data


P = TypeVar("P", bound=StageParams)


@dataclass(frozen=True)
class Stage(Generic[P]):
    """One job kind: its parameter model and its runner ``run(job, params, root, device) -> info``."""

    kind: str
    params: type[P]
    run: Callable[[Job, P, Path, str], dict[str, Any]]

    def execute(self, job: Job, root: Path, device: str) -> dict[str, Any]:
        """Validate the job's parameters and run it."""
        return self.run(job, self.params.model_validate(job.params), root, device) or {}


def make_job(kind: str, label: str, params: StageParams, deps: list[Job], out_prefix: str | None = None,
             outputs: tuple[str, ...] | None = None, wants_gpu: bool = False, exact_done: bool = False,
             **meta: Any) -> Job:
    """A job of ``kind``; its output is ``<out_prefix>/<id>`` unless ``outputs`` are given. ``exact_done``:
    outputs at fixed names (``results/`` …), done only when their done.json names this job; otherwise an
    output with any done.json counts (a grown grid's train job finds its old SAEs done)."""
    data = params.model_dump(mode="json")
    jid = job_id(kind, data, deps)
    outs = outputs if outputs is not None else (f"{out_prefix}/{jid}",)
    return Job(id=jid, kind=kind, label=label, params=data, deps=tuple(d.id for d in deps), outputs=outs,
               wants_gpu=wants_gpu, exact_done=exact_done, meta=meta)


class BackboneRef(StageParams):
    """A backbone as a job loads it (the study's BackboneSpec without its display settings)."""

    name: str = Field(description="registry or timm name")
    weights_path: str | None = Field(None, description="local weights file (None: the registry default)")
    image_size: int | None = Field(None, description="input resolution (None: native)")


class SAERecord(StageParams):
    """One SAE of the plan: its id, folders and configuration (``eval`` once it has an evaluation job)."""

    omit_when_none = ("hparams", "eval", "eval_job", "source")

    sae_id: str = Field(description="content id of the SAE")
    out: str = Field(description="its folder (saes/<sae id>)")
    grid: str = Field(description="the SAE block it belongs to")
    backbone: str = Field(description="backbone name")
    layer: int = Field(description="layer trained on")
    metrics: list[str] = Field(description="metrics computed on it")
    family: str = Field(description="SAE family")
    expansion: int = Field(description="dictionary size / d_model")
    k: int = Field(description="K (target L0 for jumprelu/relu)")
    train: dict[str, Any] = Field(description="training settings")
    hparams: dict[str, Any] | None = Field(None, description="family hyper-parameters (absent when none)")
    seed: int | None = Field(None, description="initialisation seed, when the block lists seeds (absent: "
                             "the training seed plus the SAE's position in its group)")
    eval: str | None = Field(None, description="its evaluation folder")
    eval_job: str | None = Field(None, description="id of its evaluation job")
    source: str | None = Field(None,
                               description="an existing checkpoint's reference (None: trained by the study)")


def cache_path(root: Path, out: str) -> Path:
    """The cache folder inside a cache job's output (build_cache names its own sub-folder)."""
    folder = root / out
    rec = read_done(folder)
    if rec is not None and rec.get("info", {}).get("cache"):
        return folder / rec["info"]["cache"]
    if (folder / "manifest.json").exists():
        return folder
    found = sorted(p.parent for p in folder.glob("*/manifest.json"))
    if not found:
        raise StudyError(f"{folder}: no activation cache inside (no */manifest.json); delete the folder "
                         "and rerun")
    return found[0]


def open_job_cache(root: Path, out: str) -> ActivationCache:
    """Open the activation cache a cache job wrote."""
    from visae.cache.reader import open_cache

    return open_cache(cache_path(root, out))
