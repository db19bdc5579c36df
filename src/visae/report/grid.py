"""Fig. 5 as HTML: the features job's activation-map cells (features/fig5.json) laid out per backbone."""

from __future__ import annotations

from visae.report.data import NotEnoughData, ReportData
from visae.report.page import esc


def _img(b64: str) -> str:
    return f"<img class=fig alt=feature src=data:image/png;base64,{b64}>" if b64 else "—"


def activation_grid(d: ReportData) -> str:
    """Per backbone: the mean-representative and a top-5 % Moran feature with their top images."""
    if not d.fig5:
        raise NotEnoughData("the study's features job has not run (features/fig5.json is missing)")
    cells = d.fig5.get("cells") or {}
    backbones = [b for b in d.backbones(d.main) if b in cells] + [b for b in cells
                                                                  if b not in d.backbones(d.main)]
    if not backbones:
        raise NotEnoughData("no SAE of the main slice has per-feature Moran's I (m1 with write_features)")
    head = "".join(
        f"<th>{esc(d.label(b))}<br><span class='small'>{esc(_sae_caption(cells[b]['sae']))}</span></th>"
        for b in backbones)
    rows = []
    for r, name in enumerate(f["role"] for f in cells[backbones[0]]["features"]):
        tds = "".join(f"<td class='cell'>{_img(cells[b]['features'][r]['img'])}<span class='small'>"
                      f"{esc(_feature_caption(cells[b]['features'][r]))}</span></td>" for b in backbones)
        rows.append(f"<tr><th>{esc(name)}</th>{tds}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _sae_caption(sae: dict[str, object]) -> str:
    return f"{sae['family']} {sae['expansion']}× K={sae['k']}"


def _feature_caption(feature: dict[str, object]) -> str:
    return f"feature {feature['feature']}: I = {float(str(feature['moran'])):.3f}"
