"""The report of a study whose backbones carry the demo's long labels, opened in headless Chromium:
Fig. 1b is drawn (not an error box), decodes, and its caption names its axes."""
# ruff: noqa: E402

from __future__ import annotations

import base64
import io
import os
import sys
from pathlib import Path

import pytest
import yaml

# Helper modules beside the tests (importlib import mode puts no test folder on sys.path).
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "study")]

from cdp_browser import Browser, find_chromium
from fake_stages import fake_study_yaml, use_fakes
from test_figures import DEMO_LABELS

from visae.study.config import load_study_config
from visae.study.run import run_study

FIG_1B = "Figure 1b"


@pytest.mark.slow
def test_demo_labelled_report_in_chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium is not installed")
    path = fake_study_yaml(tmp_path)  # the fake stages' four backbones, relabelled as the demo's
    data = yaml.safe_load(path.read_text())
    data["backbones"] = [{"name": b["name"], "label": label}
                         for b, label in zip(data["backbones"], DEMO_LABELS.values(), strict=True)]
    path.write_text(yaml.safe_dump(data))
    use_fakes(monkeypatch)
    cfg = load_study_config(path)
    _, summary = run_study(cfg, check_inputs=False)
    assert summary is not None and summary.ok
    report = Path(cfg.out_dir) / "report" / "index.html"
    b = Browser(exe)
    try:
        b.goto(report.resolve().as_uri())
        assert b.errors() == []
        fig = b.eval(f"""(() => {{
            const f = Array.from(document.querySelectorAll('figure'))
                .find(x => x.querySelector('figcaption').textContent.includes('{FIG_1B}'));
            if (!f) return null;
            const i = f.querySelector('img');
            return {{w: i ? i.naturalWidth : -1, h: i ? i.naturalHeight : -1, src: i ? i.src : '',
                     caption: f.querySelector('figcaption').textContent}};
        }})()""")
        assert fig is not None and fig["w"] > 0 and fig["h"] > 0, fig
        assert "x: backbone" in fig["caption"] and "y: per-feature" in fig["caption"]
        shot = os.environ.get("VISAE_REPORT_SCREENSHOT")
        if shot:  # for a person to look at: the figure as the browser decoded it
            Path(shot).write_bytes(base64.b64decode(fig["src"].split(",", 1)[1]))
    finally:
        b.close()
    from PIL import Image

    png = Image.open(io.BytesIO(base64.b64decode(fig["src"].split(",", 1)[1])))
    assert png.size == (fig["w"], fig["h"])
