"""A job of a study plan: one unit of work with content-addressed id, typed parameters and output folders.

A job's id is a hash of its kind, its parameters and its inputs' ids, so the same grid planned twice gives
the same ids, and a job whose folders hold a matching ``done.json`` is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from visae.io import hash_json

PLAN_VERSION = 1


@dataclass(frozen=True)
class Job:
    """One unit of work; ``outputs`` are folders under the study root, each done when its done.json says so.

    ``params`` is the JSON form of the stage's ``Params`` model (what enters the id); ``exact_done`` marks
    outputs at fixed names (``results/`` …), done only when their done.json names this very job.
    """

    id: str
    kind: str
    label: str
    params: dict[str, Any]
    deps: tuple[str, ...]
    outputs: tuple[str, ...]
    wants_gpu: bool = False
    exact_done: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """Jobs in a valid execution order (every job after its dependencies)."""

    jobs: list[Job]

    def by_id(self) -> dict[str, Job]:
        """Jobs keyed by id."""
        return {j.id: j for j in self.jobs}

    def of_kind(self, kind: str) -> list[Job]:
        """Jobs of one kind, in plan order."""
        return [j for j in self.jobs if j.kind == kind]


def job_id(kind: str, params: dict[str, Any], deps: list[Job]) -> str:
    """Content id of a job: kind, parameters and the ids of its inputs."""
    return hash_json({"v": PLAN_VERSION, "kind": kind, "params": params, "deps": sorted(d.id for d in deps)})


def sae_id_for(params: dict[str, Any], cache_job: Job) -> str:
    """Content id of one SAE: its family, size, K, training settings and the training cache's id."""
    return hash_json({"v": PLAN_VERSION, "sae": params, "cache": cache_job.id})
