"""The feature browser page: a self-contained HTML/JS template filled with the features job's entries."""

from __future__ import annotations

import json

from visae.report.data import ReportData
from visae.report.page import CSS, note

BROWSER_TEMPLATE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>visae feature browser</title>
<style>/*CSS*/
#list tr{cursor:pointer}#list tr:hover{background:#eef}#detail img{image-rendering:pixelated;width:100%}
#detail{position:sticky;top:0;background:#fff;border:1px solid #ddd;padding:.6em;min-height:4em}
.layout{display:grid;grid-template-columns:3fr 2fr;gap:1em;align-items:start}</style></head>
<body><main><h1>Feature browser</h1>
<p class="small">Top images of each feature with its patch activation map overlaid (brighter = stronger).
Features shown: the top ones by each sort key. Click a row to open a feature.</p>
<p>SAE <select id="sae"></select> sort by <select id="key"><option value="moran">Moran's I</option>
<option value="m5">M5 (MS)</option><option value="freq">frequency</option></select>
<span id="count" class="small"></span></p>
<div class="layout"><table id="list"><thead><tr><th>feature</th><th>Moran's I</th><th>M5</th><th>freq.</th>
<th>top images</th></tr></thead><tbody></tbody></table><div id="detail">select a feature</div></div>
</main><script>
const DATA = /*DATA*/null;
const saeSel = document.getElementById('sae'), keySel = document.getElementById('key');
const body = document.querySelector('#list tbody'), detail = document.getElementById('detail');
function fmt(v){return v===null||v===undefined?'—':Number(v).toFixed(3);}
DATA.saes.forEach((s,i)=>{const o=document.createElement('option');o.value=i;o.textContent=s.label;
  saeSel.appendChild(o);});
function openFeature(s,f){
  detail.innerHTML='';
  const h=document.createElement('h3');h.textContent=s.label+' — feature '+f.f;detail.appendChild(h);
  const p=document.createElement('p');
  p.textContent="Moran's I "+fmt(f.moran)+', M5 '+fmt(f.m5)+', fires on '+(100*f.freq).toFixed(1)+'% of '
    +s.n_images+' images';
  detail.appendChild(p);
  if(f.img){const im=document.createElement('img');im.alt='feature '+f.f;
    im.src='data:image/png;base64,'+f.img;im.className='fig';detail.appendChild(im);}
  detail.dataset.feature=String(f.f);
}
function render(){
  body.innerHTML='';
  if(!DATA.saes.length){body.innerHTML='<tr><td colspan=5>no SAE evaluated yet</td></tr>';return;}
  const s=DATA.saes[Number(saeSel.value)||0], key=keySel.value;
  const feats=s.features.slice().sort((a,b)=>((b[key]??-Infinity)-(a[key]??-Infinity)));
  document.getElementById('count').textContent=feats.length+' features';
  feats.forEach(f=>{
    const tr=document.createElement('tr');tr.className='feature-row';tr.dataset.feature=String(f.f);
    tr.innerHTML='<td>'+f.f+'</td><td>'+fmt(f.moran)+'</td><td>'+fmt(f.m5)+'</td><td>'+fmt(f.freq)
      +'</td><td></td>';
    if(f.img){const im=document.createElement('img');im.alt='feature '+f.f;
      im.src='data:image/png;base64,'+f.img;im.className='thumb';tr.lastChild.appendChild(im);}
    tr.addEventListener('click',()=>openFeature(s,f));body.appendChild(tr);
  });
}
saeSel.addEventListener('change',render);keySel.addEventListener('change',render);render();
</script></body></html>"""


def browser_page(d: ReportData) -> str:
    """``features.html``: every SAE the features job viewed, its features sortable by Moran's I, M5 and
    frequency (a note when the features job has not run)."""
    entries = [{**e,
                "label": f"{d.label(e['backbone'])} L{e['layer']} {e['family']} {e['expansion']}× K={e['k']}"}
               for e in d.browser.get("saes", [])]
    payload = json.dumps({"saes": entries}).replace("</", "<\\/")
    page = BROWSER_TEMPLATE.replace("/*DATA*/null", payload).replace("/*CSS*/", CSS)
    if not d.browser:
        missing = note("the study's features job has not run (features/browser.json is missing)")
        page = page.replace("<h1>Feature browser</h1>", f"<h1>Feature browser</h1>{missing}")
    return page
