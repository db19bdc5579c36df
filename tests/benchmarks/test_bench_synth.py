"""benchmarks/synth.py runs at a tiny size and prints both rates of the same run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_synth_benchmark_prints_generation_beside_the_disk(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "synth.py"), "--preset", "easy", "--images", "32",
           "--shard-images", "16", "--dir", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    for label in ("generator alone", "visae synth", "disk write"):
        assert re.search(rf"{label}\s*:.*MB/s", out), out
    assert re.search(r"generator / disk = [0-9.]+: (I/O|compute)-bound", out), out
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone
