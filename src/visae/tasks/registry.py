"""The downstream tasks by name: each is a :class:`TaskSpec` (its config class, its runner, default settings).

A plugin adds one with ``TASKS.register("mine", TaskSpec(MyConfig, run_mine))``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from visae.registry import Registry

if TYPE_CHECKING:
    import torch

    from visae.sae.base import SAE
    from visae.tasks.base import TaskConfig, TaskResult

Runner = Callable[["SAE | None", Any, Any, "torch.device"], "TaskResult"]
"""``runner(sae_or_None, opened_caches, config, device) -> TaskResult``."""


@dataclass(frozen=True)
class TaskSpec:
    """One task: the config class it validates, the function that runs it, defaults under the user's
    settings."""

    config_cls: type[TaskConfig]
    runner: Runner
    defaults: Mapping[str, Any] = field(default_factory=dict)


TASKS: Registry[TaskSpec] = Registry("task")
TASKS.register_package("visae.tasks", [
    ("retrieval", "retrieval:RETRIEVAL", "cosine R@1/5/10 on max-pooled features (leave-one-out)"),
    ("segmentation", "segmentation:SEGMENTATION", "linear head on patch features, ADE20K mIoU"),
    ("classification", "classification:CLASSIFICATION", "probe accuracy; sparse-probing AUC at k on codes"),
    ("cub", "classification:CUB", "classification on CUB-200-2011"),
    ("dtd", "classification:DTD", "classification on DTD"),
    ("inat", "classification:INAT", "classification on iNaturalist"),
])
