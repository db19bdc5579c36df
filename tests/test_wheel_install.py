"""Installed, not cloned: the built wheel, installed away from the source tree, runs the demo's dry run and a
scaled-down quick start from a fresh folder.

The wheel is built from a copy of the project files (so the checkout gets no ``build/`` or ``egg-info``) with
``pip wheel --no-deps --no-build-isolation`` and installed with ``pip install --no-deps --target`` (the
dependencies come from this environment: a fresh venv would copy gigabytes of torch). ``PYTHONPATH`` holds
only the install folder, and the test asserts visae is imported from there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("pyproject.toml", "README.md", "src", "studies")


def _run(cmd: list[str], cwd: Path, env: dict[str, str],
         timeout: int = 900) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """``(install folder, environment that imports visae from it only)``."""
    tmp = tmp_path_factory.mktemp("wheel")
    copy = tmp / "project"
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, copy / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            copy.mkdir(exist_ok=True)
            shutil.copy2(src, copy / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
          str(tmp / "dist"), str(copy)], tmp, env)
    (wheel,) = (tmp / "dist").glob("visae-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"visae/studies/{p.name}" for p in (ROOT / "studies").glob("*.yaml")} <= names
    assert {"visae/studies/demo.yaml", "visae/data/fashion_mnist_siblings.json", "visae/py.typed"} <= names
    site = tmp / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], tmp,
         env)
    return site, {**env, "PYTHONPATH": str(site), "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_the_installed_wheel_runs_the_demo_dry_run_from_any_folder(installed: tuple[Path, dict[str, str]],
                                                                  tmp_path: Path) -> None:
    site, env = installed
    where = _run([sys.executable, "-c", "import visae; print(visae.__file__)"], tmp_path, env).stdout.strip()
    assert Path(where).is_relative_to(site), where  # not the source tree
    r = _run([sys.executable, "-m", "visae", "study", "run", "demo", "--dry-run"], tmp_path, env)
    assert f"study folder {tmp_path / '.visae-demo'}" in r.stdout
    listed = _run([sys.executable, "-m", "visae", "study", "templates"], tmp_path, env).stdout
    assert str(site / "visae" / "studies" / "demo.yaml") in listed


def _has_offline_model() -> bool:
    from visae.backbones.offline_dinov2 import find_offline_onnx
    from visae.errors import ConfigError

    try:
        find_offline_onnx()
    except ConfigError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _has_offline_model(), reason="the offline model is not installed (visae data fetch "
                                                     "dinov2-s14-offline)")
def test_the_installed_wheel_runs_a_scaled_down_quick_start(installed: tuple[Path, dict[str, str]],
                                                            tmp_path: Path) -> None:
    """cache → train → eval → ls with the installed package, on offline digits at 56 px (4×4 patches)."""
    _, env = installed
    visae = [sys.executable, "-m", "visae"]
    common = ["--backbone", "dinov2-s14-offline", "--source", "offline:digits", "--layer", "3",
              "--image-size", "56", "--out", "caches"]
    train = _run([*visae, "cache", *common, "--split", "train", "--max-images", "60"], tmp_path, env)
    test = _run([*visae, "cache", *common, "--split", "test", "--max-images", "40"], tmp_path, env)
    train_dir, test_dir = train.stdout.strip().splitlines()[-1], test.stdout.strip().splitlines()[-1]
    _run([*visae, "train", "--cache", train_dir, "--out", "saes", "--expansion", "2", "--k", "8",
          "--set", "batch_size=64"], tmp_path, env)
    _run([*visae, "eval", "--sae", "saes/batchtopk_2x_k8", "--cache", test_dir, "--metrics", "m2",
          "--out", "results"], tmp_path, env)
    assert (tmp_path / "results" / "m2.json").is_file()
    listed = _run([*visae, "ls", "caches"], tmp_path, env).stdout
    assert Path(train_dir).name in listed and Path(test_dir).name in listed
