"""Study templates shipped inside the package: ``visae study run demo`` runs ``visae/studies/demo.yaml``.

In a source checkout ``src/visae/studies`` is a link to the repository's ``studies/`` folder, so the YAML
files exist once and the wheel carries a copy of them (package data). A template run by name writes into
the current folder (the folder name of its ``out_dir``), never into the installed package.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from visae.errors import ConfigError

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "studies"
"""Where the templates lie: the package's ``studies`` folder (the repository's ``studies/`` in a checkout)."""


def template_names() -> list[str]:
    """Names of the shipped study templates (``demo``, ``paper``, ``release``, …), sorted."""
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.yaml"))


def template_path(name: str) -> Path:
    """The YAML of template ``name`` (with or without ``.yaml``); ConfigError listing the templates if
    there is none."""
    stem = name[:-5] if name.endswith(".yaml") else name
    path = TEMPLATES_DIR / f"{stem}.yaml"
    if "/" in stem or not path.is_file():
        raise ConfigError(f"study {name!r}: no such YAML file, and no study template of that name; give a "
                          "YAML path or one of the templates: "
                          f"{', '.join(template_names()) or 'none installed'}")
    return path


def resolve_study(study: str | Path) -> tuple[Path, list[str]]:
    """``(YAML path, overrides)`` for a ``study run`` argument: an existing file as it is, else a template
    by name with ``out_dir`` moved into the current folder (``./<name of its out_dir>``)."""
    path = Path(study).expanduser()
    if path.is_file():
        return path, []
    template = template_path(str(study))
    out_dir = (yaml.safe_load(template.read_text(encoding="utf-8")) or {}).get("out_dir") or template.stem
    return template, [f"out_dir={Path.cwd() / Path(str(out_dir)).name}"]
