"""The README's Quick start, run as written (scaled down), so the README cannot drift from the code.

``VISAE_QUICKSTART_SCALE`` (default 0.1) scales every ``--max-images``; 1 runs the commands exactly as
printed. ``make install`` and ``source .venv/bin/activate`` are the set-up this test already runs in, and
``visae study run studies/demo.yaml`` is the demo, which CI runs as ``make demo``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_RUN = {"make install": "this test runs inside the installed environment",
           "source .venv/bin/activate": "visae is called through this Python",
           "visae study run studies/demo.yaml": "the demo study; CI runs it as `make demo`"}


def quickstart_commands(readme: Path = README) -> list[str]:
    """The shell lines of the Quick start's first bash block, continuation lines joined, comments dropped."""
    text = readme.read_text(encoding="utf-8")
    section = text.split("\n## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "README's Quick start has no ```bash block"
    joined = re.sub(r"\\\n\s*", " ", block.group(1))
    out = []
    for line in joined.splitlines():
        code = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if code:
            out.append(" ".join(code.split()))
    return out


def _scaled(cmd: str, scale: float) -> str:
    return re.sub(r"--max-images (\d+)",
                  lambda m: f"--max-images {max(20, round(int(m.group(1)) * scale))}", cmd)


def test_quickstart_parses_into_the_commands_we_expect() -> None:
    cmds = quickstart_commands()
    for skipped in NOT_RUN:
        assert skipped in cmds, f"README's Quick start no longer has {skipped!r}; update NOT_RUN"
    run = [c for c in cmds if c not in NOT_RUN]
    assert any(c.startswith("TRAIN=$(visae cache") for c in run) and any("visae train" in c for c in run)
    assert any(c.startswith("visae eval") for c in run)
    assert "…" not in " ".join(run), "a Quick start command holds a placeholder a user would have to guess"


@pytest.mark.slow
def test_quickstart_runs_as_written(tmp_path: Path) -> None:
    scale = float(os.environ.get("VISAE_QUICKSTART_SCALE", "0.1"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    fetch = subprocess.run([sys.executable, "-m", "visae", "data", "fetch", "fashion-mnist"], env=env,
                           capture_output=True, text=True)
    if fetch.returncode != 0:
        pytest.skip(f"Fashion-MNIST cannot be fetched here: {fetch.stderr.strip()[-300:]}")
    lines = [_scaled(c, scale) for c in quickstart_commands() if c not in NOT_RUN]
    script = "\n".join(["set -euo pipefail", f"visae() {{ {shlex.quote(sys.executable)} -m visae \"$@\"; }}",
                        *lines, 'echo "TRAIN=$TRAIN"', 'echo "TEST=$TEST"'])
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=3000)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    found = dict(line.split("=", 1) for line in r.stdout.splitlines() if line.startswith(("TRAIN=", "TEST=")))
    train, test = Path(tmp_path / found["TRAIN"]), Path(tmp_path / found["TEST"])
    assert train.parent == tmp_path / "caches" and "-fashion-mnist-train-" in train.name
    assert "-fashion-mnist-test-" in test.name and (test / "manifest.json").is_file()
    assert (tmp_path / "saes" / "batchtopk_8x_k64").is_dir()
    results = tmp_path / "results" / "batchtopk_8x_k64"
    assert {f"{m}.json"
            for m in ("m1", "m2", "m3", "m4", "m5", "m7", "raw")} <= {p.name for p in results.iterdir()}
    assert train.name in r.stdout and test.name in r.stdout  # visae ls lists both


def python_api_example(readme: Path = README) -> str:
    """The README's Python API example (the first ```python block of that section)."""
    section = readme.read_text(encoding="utf-8").split("\n## Python API", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None, "README's Python API section has no ```python block"
    return block.group(1)


@pytest.mark.slow
def test_python_api_example_runs_as_written(tmp_path: Path) -> None:
    """On an offline set as printed (no scaling: the example is small), in a fresh folder."""
    r = subprocess.run([sys.executable, "-c", python_api_example()], cwd=tmp_path,
                       capture_output=True, text=True,
                       timeout=3000, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert len(r.stdout.strip().split()) == 2  # print(results["m1"].value, results["m2"].fvu)
    assert "holding out" in r.stderr and "capped" in r.stderr  # a small cache: both said, not silent
