"""The study configuration: a grid of backbones × layers × SAE families × widths × K, read from YAML.

Paths in the YAML are resolved relative to the YAML file; ``${NAME}`` placeholders are filled from the
environment (a missing variable is a ConfigError that names the key and the variable).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from visae.config import FrozenConfig, build_config, read_yaml
from visae.errors import ConfigError
from visae.results.hypotheses import Hypothesis
from visae.sae.existing import CheckpointSpec, ExistingSAE, expand, release_specs
from visae.uncertainty import BootstrapConfig

TEST_ROLE = "@test"
"""Suffix of the role of an OOD set's official test split (its own cache)."""


class SourceSpec(FrozenConfig):
    """One image source, as understood by ``visae.open_source``."""

    spec: str = Field(description="source spec, e.g. 'offline:fashion-mnist' or "
                                  "'imagefolder:/data/imagenet/val'")
    split: str = Field("train", description="split of the source to read")
    max_images: int | None = Field(None, ge=1, description="use at most this many images (None: all)")
    seed: int = Field(42, description="seed of the subset draw when max_images is set")
    test_split: str | None = Field(
        None,
        description="OOD sets only: the official test split, cached separately; M6 trains its probes on "
                          "'split' and tests on this one (None: M6 makes a stratified 80/20 split "
                          "of 'split')")


class BackboneSpec(FrozenConfig):
    """One backbone of the grid."""

    name: str = Field(description="registry or timm name, e.g. 'dinov2-b14' or 'dinov2-s14-offline'")
    weights_path: str | None = Field(None, description="local weights file (None: the registry default)")
    image_size: int | None = Field(None, ge=14,
                                   description="input resolution (None: the backbone's native size)")
    evaluator: str | None = Field(
        None, description="M5 evaluator backbone (None: the study's 'evaluators' map, paper Table 5)")
    label: str | None = Field(None, description="display name in the report (None: the name)")
    data: dict[str, SourceSpec] = Field(
        default_factory=dict,
        description="image sets of this backbone that replace the study's of the same role (train, eval, an "
                    "OOD or task-source name); e.g. a synth:<preset> backbone beside image backbones draws "
                    "its own: {train: {spec: synth, split: train, max_images: 400}, eval: …}")

    def __hash__(self) -> int:  # frozen, but ``data`` is a dict: hash its items
        return hash((self.name, self.weights_path, self.image_size, self.evaluator, self.label,
                     tuple(sorted(self.data.items()))))

    @property
    def display(self) -> str:
        """Name shown in figures and tables."""
        return self.label or self.name


class SAEGrid(FrozenConfig):
    """One block of SAEs: a family × expansion factors × K trained on some backbones and layers, or existing
    checkpoints (``checkpoints``) that are evaluated without training."""

    name: str = Field("main",
                      description="tag of this block in the results ('main', 'jumprelu', 'layer-ablation')")
    family: str = Field("batchtopk",
                        description="SAE family (visae.sae.registry): batchtopk, topk, jumprelu, relu, "
                                    "matryoshka, gated, archetypal, or a plugin's")
    expansions: list[int] = Field(
        default_factory=list, description="dictionary sizes as multiples of d_model (paper: 8, 16, 32); "
                                          "empty for a block of existing checkpoints")
    ks: list[int] = Field(
        default_factory=list,
        description="sparsity K (target L0 for jumprelu/relu); paper: 64, 128, 192, 256; "
                                          "empty for a block of existing checkpoints")
    checkpoints: Literal["release"] | list[CheckpointSpec] | None = Field(
        None,
        description="existing SAEs to evaluate instead of training: 'release' (the authors' 12 per backbone "
                          "on the hub) or a list of {backbone, repo | path | ref, subfolders, revision}")
    backbones: list[str] | None = Field(None, description="restrict to these backbone names (None: all)")
    layers: list[int] | None = Field(None, description="layers to train on (None: the study's main layers)")
    hparams: dict[str, Any] = Field(default_factory=dict,
                                    description="family hyper-parameters (JumpReLU bandwidth …)")
    seeds: list[int] | None = Field(None, description="initialisation seeds: each configuration is "
                                                      "trained once per "
                                    "seed, all on the same pass (None: one SAE per configuration); the "
                                    "variance decomposition then separates seed noise from the "
                                    "hyper-parameter effect")
    metrics: list[str] | None = Field(None, description="metrics of these SAEs (None: the study's 'metrics')")
    train: dict[str, Any] = Field(default_factory=dict,
                                  description="training settings that override the study's 'train'")

    @field_validator("expansions", "ks")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError("must be a list of positive integers")
        return v

    @model_validator(mode="after")
    def _grid_or_checkpoints(self) -> SAEGrid:
        if self.checkpoints is None:
            for key in ("expansions", "ks"):
                if not getattr(self, key):
                    raise ValueError(f"{key}: must be a non-empty list of positive integers (or name "
                                     "existing SAEs with 'checkpoints')")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError("seeds: must be a non-empty list of distinct integers")
        if self.checkpoints is not None and self.seeds is not None:
            raise ValueError("a block of existing 'checkpoints' trains nothing: drop seeds")
        if self.checkpoints is not None and (self.expansions or self.ks or self.train or self.hparams):
            raise ValueError("a block of existing 'checkpoints' trains nothing: drop expansions, ks, train "
                             "and hparams (the checkpoints carry their own)")
        return self

    @property
    def trains(self) -> bool:
        """True when the block trains its SAEs (False: it evaluates existing checkpoints)."""
        return self.checkpoints is None

    def existing(self, backbones: list[str]) -> list[ExistingSAE]:
        """The existing checkpoints of this block on ``backbones`` (the block's, among the study's)."""
        if self.checkpoints is None:
            return []
        specs = release_specs(backbones) if self.checkpoints == "release" else [
            c for c in self.checkpoints if c.backbone in backbones]
        return [item for spec in specs for item in expand(spec)]


class DataConfig(FrozenConfig):
    """The image sets of a study."""

    train: SourceSpec | None = Field(
        None, description="images whose activations train the SAEs (paper: ImageNet-1K train); "
                          "not needed when every block evaluates existing checkpoints")
    eval: SourceSpec = Field(description="held-out images for M1–M5, M7 (paper: ImageNet-1K val)")
    ood: dict[str, SourceSpec] = Field(
        default_factory=dict, description="M6 cross-domain sets by name (paper: inat, cub, dtd)")
    task_sources: dict[str, SourceSpec] = Field(
        default_factory=dict,
        description="extra image sets that downstream tasks refer to by name (e.g. ade20k)")


class TaskSpec(FrozenConfig):
    """One downstream task (visae.tasks) run on raw features and on SAE codes."""

    name: str = Field(description="task name in the results, e.g. 'retrieval', 'cub', 'dtd', 'segmentation'")
    kind: str = Field(description="task kind in visae.tasks: retrieval, classification, segmentation")
    source: str = Field("eval", description="image set: 'eval', 'train', an ood name or a task_sources name")
    val_source: str | None = Field(
        None, description="separate validation image set (e.g. ADE20K val); None: the task splits 'source'")
    config: dict[str, Any] = Field(default_factory=dict, description="settings of the task")
    on_codes: bool = Field(True, description="also run the task on each SAE's codes (codes-lift, App. O)")


class StudyConfig(FrozenConfig):
    """A whole study: what to cache, train, evaluate, analyse and report."""

    name: str = Field("study", description="name shown in the report")
    out_dir: Path = Field(Path("study-out"), description="study folder (relative to the YAML file)")
    device: str = Field("auto", description="torch device for every job ('auto': CUDA, MPS, else CPU)")
    backbones: list[BackboneSpec] = Field(description="backbones of the grid (paper: five ViT-B)")
    layers: list[int] = Field([11], description="main layers (0-based block index; paper: 11)")
    saes: list[SAEGrid] = Field(description="SAE blocks of the grid")
    data: DataConfig = Field(description="image sets")
    cache: dict[str, Any] = Field(default_factory=dict,
                                  description="settings passed to build_cache (batch size, dtype …)")
    train_cache: dict[str, Any] = Field(
        default_factory=dict,
        description="build_cache settings of the SAE training caches only, over 'cache' "
                                          "(e.g. tokens_per_image: 1 keeps one seeded patch per "
                                          "training image)")
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="visae.sae.train.TrainConfig fields shared by every SAE (paper Table 1)")
    metrics: list[str] = Field(
        ["m1", "m2", "m3", "m4", "m5", "m6", "m7"], description="metrics computed for every SAE (one pass)")
    metric_configs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-metric settings by name (paper Table 2 defaults otherwise)")
    raw_diagnostic: bool = Field(True,
                                 description="compute the raw-backbone Moran's I (App. G) per backbone/layer")
    evaluators: dict[str, str] = Field(
        default_factory=dict,
        description="M5 evaluator backbone per backbone (empty: the registry's paper Table 5 pairing)")
    tasks: list[TaskSpec] = Field(
        default_factory=list,
        description="downstream tasks (hypotheses, correlations), run at the main layers")
    hypotheses: list[Hypothesis] = Field(
        default_factory=list, description="pre-registered hypotheses (empty: the paper's H1–H4, §4.5)")
    eval_group_size: int = Field(64, ge=1,
                                 description="images per encoding group in evaluation (paper Table 2)")
    browser_features: int = Field(64, ge=0, description="features per sort key in the feature browser")
    seed: int = Field(42, description="seed of every random choice (paper Table 1)")
    bootstrap: BootstrapConfig | None = Field(None, description="intervals beside every headline metric: "
                                              "n_boot, level, seed (None: 200 replicates, 95 %)")
    stability: dict[str, Any] | None = Field(
        None, description="seed-stability settings (visae.metrics.stability.StabilityConfig: threshold, "
                          "max_atoms …) for SAE blocks with several 'seeds' (None: its defaults)")
    plugins: list[str] = Field(
        default_factory=list,
        description="modules imported before every job (they may register backbones, sources)")

    @field_validator("backbones", mode="before")
    @classmethod
    def _names_to_specs(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": x} if isinstance(x, str) else x for x in v]
        return v

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        names = [b.name for b in self.backbones]
        if len(set(names)) != len(names):
            raise ValueError(f"backbones: duplicate names in {names}")
        for grid in self.saes:
            for b in grid.backbones or []:
                if b not in names:
                    raise ValueError(f"saes[{grid.name}].backbones: {b!r} is not one of the study's "
                                     f"backbones {names}")
            if grid.trains and self.data.train is None:
                raise ValueError(f"data.train: missing; the block saes[{grid.name}] trains SAEs on it")
            _check_checkpoints(grid, grid.backbones or names, names)
        return self

    def evaluator_for(self, backbone: BackboneSpec) -> str | None:
        """The M5 evaluator of ``backbone``: its own setting, the 'evaluators' map, the registry's pairing."""
        from visae.backbones.registry import paired_evaluator

        # None when the registry has no pairing either: M5 decides ('auto') or reports it.
        return backbone.evaluator or self.evaluators.get(backbone.name) or paired_evaluator(backbone.name)

    def source(self, role: str, backbone: BackboneSpec | None = None) -> SourceSpec:
        """The image set named ``role``: 'train', 'eval', an OOD name or a task source name (``backbone``'s
        own ``data`` entry for that role first)."""
        if backbone is not None and role in backbone.data:
            return backbone.data[role]
        if role == "train":
            if self.data.train is None:
                raise ConfigError("study: data.train is not set; give the training images (data.train.spec)")
            return self.data.train
        if role == "eval":
            return self.data.eval
        if role in self.data.ood:
            return self.data.ood[role]
        if role.endswith(TEST_ROLE) and role[: -len(TEST_ROLE)] in self.data.ood:
            spec = self.data.ood[role[: -len(TEST_ROLE)]]
            if spec.test_split is None:
                raise ConfigError(f"study: data.ood.{role[: -len(TEST_ROLE)]} has no test_split")
            return spec.model_copy(update={"split": spec.test_split, "test_split": None})
        if role in self.data.task_sources:
            return self.data.task_sources[role]
        raise ConfigError(f"study: no image set named {role!r}; known: train, eval, "
                          + ", ".join([*self.data.ood, *self.data.task_sources]))


def _check_checkpoints(grid: SAEGrid, block_backbones: list[str], names: list[str]) -> None:
    """Every checkpoint spec names a study backbone the block covers; 'release' covers only the paper's
    five."""
    if grid.checkpoints == "release":
        from visae.sae.hub import RELEASE_REPOS

        missing = [b for b in block_backbones if b not in RELEASE_REPOS]
        if missing:
            raise ValueError(f"saes[{grid.name}].checkpoints: the authors' release has no SAEs for "
                             f"{', '.join(missing)} (it covers {', '.join(RELEASE_REPOS)}); restrict the "
                             "block with 'backbones' or list the checkpoints")
        return
    for i, spec in enumerate(grid.checkpoints or []):
        if spec.backbone not in block_backbones:
            raise ValueError(f"saes[{grid.name}].checkpoints[{i}].backbone: {spec.backbone!r} is not one of "
                             f"the block's backbones {block_backbones if grid.backbones else names}")


_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_placeholders(data: Any, where: str = "") -> Any:
    """Replace ``${NAME}`` in every string by the environment variable NAME (ConfigError when unset)."""
    if isinstance(data, dict):
        return {k: expand_placeholders(v, f"{where}.{k}" if where else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [expand_placeholders(v, f"{where}[{i}]") for i, v in enumerate(data)]
    if isinstance(data, str):
        def sub(m: re.Match[str]) -> str:
            value = os.environ.get(m.group(1))
            if value is None:
                raise ConfigError(f"{where}: environment variable {m.group(1)} is not set; export it "
                                  f"(e.g. {m.group(1)}=/path/to/data) or override with --set {where}=...")
            return value
        return _PLACEHOLDER.sub(sub, data)
    return data


# Spec prefixes whose remainder is a file-system path (resolved relative to the YAML, checked before a run).
PATH_PREFIXES = ("folder:", "ade20k:", "imagefolder:", "inat:", "cub:", "dtd:")
QUERY_PREFIXES = ("dtd:",)
"""Path prefixes whose spec may end in ``?option=value`` after the path (``dtd:/root?fold=2``)."""


def _split_query(prefix: str, rest: str) -> tuple[str, str]:
    """(path, ``?query`` or '') of a spec's remainder."""
    if prefix in QUERY_PREFIXES and "?" in rest:
        path, _, query = rest.partition("?")
        return path, "?" + query
    return rest, ""


def _resolve_spec(spec: str, base: Path) -> str:
    for prefix in PATH_PREFIXES:
        if spec.startswith(prefix):
            rest, query = _split_query(prefix, spec[len(prefix):])
            if rest and not Path(rest).expanduser().is_absolute():
                return prefix + str((base / rest).resolve()) + query
            return prefix + str(Path(rest).expanduser()) + query if rest.startswith("~") else spec
    if spec.startswith((".", "/", "~")):
        return str((base / Path(spec).expanduser()).resolve())
    return spec


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    out = dict(data)
    if "out_dir" in out and out["out_dir"] is not None:
        p = Path(str(out["out_dir"])).expanduser()
        out["out_dir"] = str(p if p.is_absolute() else (base / p).resolve())
    data_section = out.get("data")
    if isinstance(data_section, dict):
        new = dict(data_section)
        for role in ("train", "eval"):
            if isinstance(new.get(role), dict) and isinstance(new[role].get("spec"), str):
                new[role] = {**new[role], "spec": _resolve_spec(new[role]["spec"], base)}
        for group in ("ood", "task_sources"):
            if isinstance(new.get(group), dict):
                new[group] = {k: ({**v, "spec": _resolve_spec(v["spec"], base)}
                                  if isinstance(v, dict) and isinstance(v.get("spec"), str) else v)
                              for k, v in new[group].items()}
        out["data"] = new
    if isinstance(out.get("backbones"), list):
        out["backbones"] = [
            {**b, "weights_path": str((base / Path(b["weights_path"]).expanduser()).resolve())}
            if isinstance(b, dict) and b.get("weights_path") else b
            for b in out["backbones"]]
    return out


def load_study_config(path: Path | str, overrides: list[str] | None = None,
                      validate: bool = True) -> StudyConfig:
    """Read a study YAML, apply ``--set`` overrides, expand ``${ENV}`` and resolve paths against the file.

    ``validate``: also check every setting down to its leaves against the config models it feeds (metric,
    training, cache and task settings, layers, K, sources, hypotheses: :func:`check_study_config`), so a
    typo is an error here, before any job runs."""
    from visae.config import apply_overrides

    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides)
    data = expand_placeholders(data)
    data = _resolve_paths(data, path.resolve().parent)
    cfg = build_config(StudyConfig, data, None, source=str(path))
    if validate:
        check_study_config(cfg, str(path))
    return cfg


def check_study_config(cfg: StudyConfig, source: str = "study") -> None:
    """ConfigError listing every problem :func:`visae.study.validate.validate_study` finds (``source: N
    problem(s): key: what; key: what``); nothing when the study is sound."""
    from visae.study.validate import validate_study

    problems = validate_study(cfg)
    if problems:
        raise ConfigError(f"{source}: {len(problems)} problem(s) found without computing: "
                          + "; ".join(problems) + "; fix them in the YAML or with --set KEY=VALUE")


def check_inputs_exist(cfg: StudyConfig) -> None:
    """Before a run: every path-valued image spec and weights file must exist (ConfigError names the key)."""
    problems: list[str] = []
    roles: dict[str, SourceSpec] = {"data.eval": cfg.data.eval}
    if cfg.data.train is not None:
        roles["data.train"] = cfg.data.train
    roles.update({f"data.ood.{k}": v for k, v in cfg.data.ood.items()})
    roles.update({f"data.task_sources.{k}": v for k, v in cfg.data.task_sources.items()})
    for key, src in roles.items():
        path = spec_path(src.spec)
        if path is not None and not path.exists():
            problems.append(f"{key}.spec: {path} does not exist")
    for i, b in enumerate(cfg.backbones):
        if b.weights_path and not Path(b.weights_path).exists():
            problems.append(f"backbones[{i}].weights_path: {b.weights_path} does not exist")
    if problems:
        raise ConfigError("study inputs missing:\n  " + "\n  ".join(problems)
                          + "\nset the paths in the YAML, the ${...} environment variables, or "
                            "--set key=path")


def spec_path(spec: str) -> Path | None:
    """The file-system path inside a spec, or None when the spec names a built-in source."""
    for prefix in PATH_PREFIXES:
        if spec.startswith(prefix):
            return Path(_split_query(prefix, spec[len(prefix):])[0])
    if spec.startswith("/"):
        return Path(spec)
    return None


def dump_study_yaml(cfg: StudyConfig) -> str:
    """The resolved configuration as YAML (written into the study folder for the record)."""
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
