"""Build the ImageNet-1k sibling groups of M7 from WordNet 3.0: ``src/visae/data/imagenet_siblings.json``
(the paper-literal depth-1 set) and ``src/visae/data/imagenet_authors_siblings.json`` (the authors' depth-1 +
depth-2 set, as released in ``visaebench/data/wordnet_pairs.json``).

Rules (every ImageNet-1k class is a WordNet 3.0 noun synset, its wnid ``n<offset>``):

- a class's *parent* is its first direct hypernym (``@`` pointer) in WordNet's own order (the order of
  ``data.noun``); its *grandparent* is the parent's first hypernym;
- **depth 1** (paper §4.4, "each ImageNet hierarchy sibling group with at least three classes"): classes
  grouped by parent, groups of ≥ 3;
- **depth 2** (authors' release only): classes grouped by grandparent, groups of ≥ 5, leaving out
  grandparents that are already a depth-1 group. (Reverse-engineered from the release and checked on
  it: every one of its 47 depth-2 groups obeys it and no other grandparent does.)

Ties: 38 classes have several direct hypernyms. nltk returns a synset's hypernyms from a ``set``, so
"``hypernyms()[0]``" changes with ``PYTHONHASHSEED``; the authors' release is one such draw. Here the
order is WordNet's file order (deterministic). ``--ties PATH`` (a ``wordnet_pairs.json``) makes the authors'
set take the release's choice wherever WordNet allows it (each choice is checked to be a real hypernym);
every such choice is listed in the file's provenance. The paper-literal set always uses file order.

WordNet is read straight from the Debian package ``wordnet-base`` (``apt-get install -y wordnet-base``;
``/usr/share/wordnet/{data,index}.noun``); group names carry nltk-style synset names (``finch.n.01``, the
sense number from ``index.noun``) for comparison with the release. The ImageNet-1k class list and lemma
names come from timm (``timm/data/_info``).

Usage: ``python scripts/build_imagenet_hierarchy.py [--wordnet-dir DIR] [--ties wordnet_pairs.json]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1] / "src" / "visae" / "data"
DEPTH1_MIN, DEPTH2_MIN = 3, 5


class WordNet:
    """Just enough of a WordNet 3.0 noun database reader: first lemma, hypernyms in file order, synset
    names."""

    def __init__(self, folder: Path) -> None:
        self.data = (folder / "data.noun").read_bytes()
        self.senses: dict[str, list[int]] = {}
        for line in (folder / "index.noun").read_text(encoding="utf-8").splitlines():
            if line.startswith(" "):
                continue  # licence header
            f = line.split()
            n_synsets, n_ptr = int(f[2]), int(f[3])
            self.senses[f[0]] = [int(x) for x in f[6 + n_ptr:6 + n_ptr + n_synsets]]
        self._lines: dict[int, list[str]] = {}
        version = "3.0" if b"WordNet 3.0" in self.data[:3000] else "unknown"
        self.version = version

    def _fields(self, offset: int) -> list[str]:
        if offset not in self._lines:
            end = self.data.index(b"\n", offset)
            line = self.data[offset:end].decode("utf-8")
            if int(line[:8]) != offset:
                raise SystemExit(f"data.noun: no synset at byte offset {offset}; not WordNet 3.0?")
            self._lines[offset] = line.split(" | ")[0].split()
        return self._lines[offset]

    def lemma(self, offset: int) -> str:
        """First lemma of the synset, as written in data.noun (e.g. ``Persian_cat``)."""
        return self._fields(offset)[4]

    def hypernyms(self, offset: int) -> list[int]:
        """Direct hypernyms (``@``; instance hypernyms ``@i`` when there are none), in file order."""
        f = self._fields(offset)
        n_words = int(f[3], 16)
        p = 4 + 2 * n_words
        n_ptr = int(f[p])
        ptrs = [f[p + 1 + 4 * i:p + 5 + 4 * i] for i in range(n_ptr)]
        direct = [int(o) for sym, o, pos, _ in ptrs if sym == "@" and pos == "n"]
        return direct or [int(o) for sym, o, pos, _ in ptrs if sym == "@i" and pos == "n"]

    def name(self, offset: int) -> str:
        """nltk-style synset name ``lemma.n.NN`` (lower case; sense number from index.noun)."""
        lemma = self.lemma(offset)
        return f"{lemma.lower()}.n.{self.senses[lemma.lower()].index(offset) + 1:02d}"


def wnid(offset: int) -> str:
    return f"n{offset:08d}"


def release_ties(path: Path | None, wnids: list[str],
                 class_index: list[str] | None) -> tuple[dict[str, str], dict[str, str]]:
    """From a ``wordnet_pairs.json``: class wnid → its depth-1 group synset name, and → its depth-2 group
    name."""
    if path is None:
        return {}, {}
    doc = json.loads(path.read_text())
    order = class_index or wnids
    d1, d2 = {}, {}
    for gname, g in doc["sibling_groups"].items():
        for i in g["class_indices"]:
            (d1 if g.get("hierarchy_depth", 1) == 1 else d2)[order[i]] = gname
    return d1, d2


class Ties:
    """The release's multi-hypernym choices: its group of each class at each depth, and its group names."""

    def __init__(self, member: tuple[dict[str, str], dict[str, str]]) -> None:
        self.member = member
        self.names = (set(member[0].values()), set(member[1].values()))

    def pick(self, wn: WordNet, w: str, depth: int, options: list[int], below: dict[int, int]) -> int:
        """The option consistent with the release. Its group of ``w`` at ``depth`` if it lists one; else an
        option that is not one of its groups at that depth and, at depth 1, whose own hypernyms lead to the
        release's depth-2 group of ``w`` (or, when it has none, not only to depth-2 groups). Among those, the
        option fewest single-hypernym classes share (``below``), then WordNet file order."""
        if len(options) == 1 or not self.names[0]:
            return options[0]
        named = {wn.name(o): o for o in options}
        group = self.member[depth - 1].get(w)
        if group in named:
            return named[group]
        cands = [o for o in options if wn.name(o) not in self.names[depth - 1]] or options
        if depth == 1:
            target = self.member[1].get(w)

            def leads(o: int) -> bool:
                ups = {wn.name(h) for h in wn.hypernyms(o)}
                return target in ups if target is not None else bool(ups - self.names[1])

            cands = [o for o in cands if leads(o)] or cands
        return min(cands, key=lambda o: (below.get(o, 0), options.index(o)))


def _sure_counts(wn: WordNet, wnids: list[str]) -> tuple[dict[int, int], dict[int, int]]:
    """Per synset: how many classes have it as their only possible parent, and as their only grandparent."""
    one: dict[int, int] = defaultdict(int)
    two: dict[int, int] = defaultdict(int)
    for w in wnids:
        ps = wn.hypernyms(int(w[1:]))
        if len(ps) == 1:
            one[ps[0]] += 1
            gs = wn.hypernyms(ps[0])
            if len(gs) == 1:
                two[gs[0]] += 1
    return one, two


def build(wn: WordNet, wnids: list[str], ties: Ties,
          depth2: bool) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Groups ``{group name: {synset, wnid, depth, classes}}`` and the choices that differ from file order."""
    parent: dict[str, int] = {}
    grand: dict[str, int] = {}
    broken: list[dict[str, Any]] = []
    sure1, sure2 = _sure_counts(wn, wnids)
    for w in wnids:
        options = wn.hypernyms(int(w[1:]))
        parent[w] = ties.pick(wn, w, 1, options, sure1)
        if parent[w] != options[0]:
            broken.append({"class": w, "depth": 1, "chosen": wn.name(parent[w]),
                           "file_order_first": wn.name(options[0])})
        up = wn.hypernyms(parent[w])
        if up:
            grand[w] = ties.pick(wn, w, 2, up, sure2)
            if grand[w] != up[0]:
                broken.append({"class": w, "depth": 2, "chosen": wn.name(grand[w]),
                               "file_order_first": wn.name(up[0])})
    groups: dict[str, dict[str, Any]] = {}
    for depth, rel, min_size in ((1, parent, DEPTH1_MIN), (2, grand, DEPTH2_MIN)):
        if depth == 2 and not depth2:
            break
        members: dict[int, list[str]] = defaultdict(list)
        for w, o in rel.items():
            members[o].append(w)
        taken = {g["wnid"] for g in groups.values()}
        for o in sorted(members):
            if len(members[o]) >= min_size and wnid(o) not in taken:
                groups[f"{wn.lemma(o).replace('_', ' ')} ({wnid(o)})"] = {
                    "synset": wn.name(o), "wnid": wnid(o), "depth": depth, "classes": sorted(members[o])}
    return groups, broken


def write(out: Path, name: str, groups: dict[str, dict[str, Any]], aliases: dict[str, str],
          provenance: dict[str, Any]) -> None:
    doc = {
        "name": name,
        "groups": {g: v["classes"] for g, v in groups.items()},
        "group_info": {g: {k: v[k] for k in ("synset", "wnid", "depth")} for g, v in groups.items()},
        "aliases": aliases,
        "provenance": {**provenance, "n_groups": len(groups),
                       "n_groups_by_depth": {str(d): sum(v["depth"] == d for v in groups.values())
                                             for d in (1, 2)},
                       "n_class_slots": sum(len(v["classes"]) for v in groups.values()),
                       "n_classes": len({c for v in groups.values() for c in v["classes"]})},
    }
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out)
    p = doc["provenance"]
    print(f"{out}: {p['n_groups']} groups {p['n_groups_by_depth']}, {p['n_class_slots']} class slots")


def main() -> None:
    """Read timm's class list and WordNet 3.0, build both sets, write them."""
    import timm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wordnet-dir", default="/usr/share/wordnet", type=Path)
    ap.add_argument("--ties", type=Path, default=None,
                    help="visaebench's wordnet_pairs.json: take its choice for classes with several "
                         "hypernyms")
    ap.add_argument("--out-dir", type=Path, default=DATA)
    args = ap.parse_args()

    info = Path(timm.__file__).parent / "data" / "_info"
    wnids = (info / "imagenet_synsets.txt").read_text().split()
    lemma = dict(line.split("\t", 1)
                 for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
                 if "\t" in line)
    if len(wnids) != 1000:
        raise SystemExit(f"{info}/imagenet_synsets.txt: expected 1000 wnids, found {len(wnids)}")
    wn = WordNet(args.wordnet_dir)
    aliases: dict[str, str] = {}
    for w in wnids:
        aliases[lemma.get(w, "")] = w
        aliases[lemma.get(w, "").split(",")[0].strip()] = w
    aliases = dict(sorted(aliases.items()))
    common = {"source": f"WordNet {wn.version} (Debian wordnet-base, {args.wordnet_dir}), ImageNet-1k wnids "
                        f"from timm {timm.__version__}",
              "script": "scripts/build_imagenet_hierarchy.py", "date": dt.date.today().isoformat()}

    groups, _ = build(wn, wnids, Ties(({}, {})), depth2=False)
    write(args.out_dir / "imagenet_siblings.json", "imagenet", groups, aliases, {
        **common,
        "rule": "paper §4.4: siblings = ImageNet-1k classes sharing their first direct WordNet hypernym "
                          "(WordNet file order); groups with >= 3 classes"})

    ties = Ties(release_ties(args.ties, wnids, None))
    groups, broken = build(wn, wnids, ties, depth2=True)
    write(args.out_dir / "imagenet_authors_siblings.json", "imagenet-authors", groups, aliases, {
        **common,
        "rule": "the authors' release (visaebench 0.1.0 data/wordnet_pairs.json): depth 1 = classes "
                          "sharing their first direct hypernym, groups >= 3; depth 2 = classes sharing the "
                          "parent's first hypernym, groups >= 5, grandparents that are a depth-1 "
                          "group left out",
        "ties": ("a class with several direct hypernyms takes the choice consistent with the release "
                 "(Ties.pick; tie_breaks lists those that differ from WordNet file order)"
                 if args.ties else "WordNet file order"),
        "ties_from": str(args.ties.name) if args.ties else None, "tie_breaks": broken})


if __name__ == "__main__":
    main()
