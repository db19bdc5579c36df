"""The synthetic quick start of docs/synthetic.md, run as written, so the page cannot drift from the code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "synthetic.md"


def quickstart_commands(doc: Path = DOC) -> list[str]:
    """The shell lines of the "Synthetic quick start" bash block, comments dropped."""
    section = doc.read_text(encoding="utf-8").split("\n## Synthetic quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "docs/synthetic.md's quick start has no ```bash block"
    joined = re.sub(r"\\\n\s*", " ", block.group(1))
    return [" ".join(line.split()) for line in joined.splitlines() if line.strip() and not line.lstrip()
            .startswith("#")]


def test_quickstart_is_the_synth_train_eval_path() -> None:
    cmds = quickstart_commands()
    assert [c.split("(", 1)[-1].split()[:2] for c in cmds[:2]] == [["visae", "synth"]] * 2
    assert cmds[2].startswith("visae train") and cmds[3].startswith("visae eval") and "recovery" in cmds[3]


@pytest.mark.slow  # ~11 s on a quiet 2-core machine (~35 s on a loaded one)
def test_quickstart_runs_and_recovers_the_planted_features(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    src = str(DOC.parents[1] / "src")  # this source tree, also when visae is installed elsewhere
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    script = "set -euo pipefail\n" + "\n".join(quickstart_commands()) + "\n"
    res = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((tmp_path / "results" / "easy" / "recovery.json").read_text())
    result = record["result"]
    assert result["feature_recall"] >= 0.75 and result["mcc"] >= 0.85, result
    assert (tmp_path / "results" / "easy" / "recovery_features.parquet").is_file()
