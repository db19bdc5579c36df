"""Running a study: plan, lock the folder, execute the missing jobs, and describe progress."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from visae.errors import ConfigError, StudyError
from visae.io import atomic_write_text
from visae.results.layout import LOCK_FILE, STUDY_YAML
from visae.study.config import StudyConfig, check_inputs_exist, check_study_config, dump_study_yaml
from visae.study.executors import EventFn, Execute, RunSummary, run_local, run_ray
from visae.study.job import Plan
from visae.study.plan import plan_study
from visae.study.protocol import job_done, study_lock
from visae.study.stages import run_job


def describe_plan(plan: Plan, root: Path) -> str:
    """One line per job: done or to do, its kind, label and id; then totals per kind."""
    lines = []
    todo: Counter[str] = Counter()
    done: Counter[str] = Counter()
    for job in plan.jobs:
        is_done = job_done(job, root)
        (done if is_done else todo)[job.kind] += 1
        lines.append(f"{'done' if is_done else 'todo':4}  {job.kind:10} {job.id}  {job.label}")
    kinds = list(dict.fromkeys(j.kind for j in plan.jobs))
    lines.append("")
    lines.append("  ".join(f"{k}: {done[k]}/{done[k] + todo[k]}" for k in kinds))
    lines.append(f"total: {sum(done.values())}/{len(plan.jobs)} done; study folder {root}")
    return "\n".join(lines)


def study_status(cfg: StudyConfig) -> str:
    """Progress of a study: jobs done per kind, and whether a run holds the lock."""
    root = Path(cfg.out_dir)
    plan = plan_study(cfg)
    text = describe_plan(plan, root)
    lock = root / LOCK_FILE
    if lock.exists():
        text += f"\nlocked: {lock.read_text(encoding='utf-8').strip()}"
    return text


def run_study(cfg: StudyConfig, executor: str = "local", address: str | None = None, dry_run: bool = False,
              max_retries: int | None = None, on_event: EventFn | None = None,
              check_inputs: bool = True, execute: Execute = run_job,
              validate: bool = True) -> tuple[Plan, RunSummary | None]:
    """Plan ``cfg`` and run what is missing (nothing when ``dry_run``); the summary lists failures.

    ``execute`` runs one job (default :func:`visae.study.stages.run_job`; tests wrap it to inject
    failures). ``validate``: check every setting first (:func:`visae.study.config.check_study_config`;
    False when the caller just did)."""
    if executor not in ("local", "ray"):
        raise StudyError(f"--executor {executor!r}: expected 'local' or 'ray'")
    if executor == "local" and address is not None:
        raise ConfigError(f"--address {address}: does not apply with the local executor and would be "
                          "ignored; add --executor ray, or drop --address")
    if max_retries is not None and (isinstance(max_retries, bool) or max_retries < 0):
        raise ConfigError(f"--max-retries {max_retries}: must be 0 or more (retries of a failing job)")
    if validate and not dry_run:
        check_study_config(cfg)  # every setting to its leaves, before any job runs
    root = Path(cfg.out_dir)
    plan = plan_study(cfg)
    if dry_run:
        return plan, None
    if check_inputs:
        check_inputs_exist(cfg)
    if executor == "ray" and address not in (None, "local"):
        from visae.study.executors import check_ray_address

        check_ray_address(str(address))  # seconds, not Ray's minutes of retries; before the folder is touched
    with study_lock(root):
        atomic_write_text(root / STUDY_YAML, dump_study_yaml(cfg))
        if executor == "local":
            summary = run_local(plan, root, device=cfg.device, max_retries=0 if max_retries is None
                                else max_retries,
                                on_event=on_event, plugins=tuple(cfg.plugins), execute=execute)
        else:
            summary = run_ray(plan, root, address=address or "local", device=cfg.device,
                              max_retries=2 if max_retries is None else max_retries, on_event=on_event,
                              plugins=tuple(cfg.plugins), execute=execute)
    return plan, summary
