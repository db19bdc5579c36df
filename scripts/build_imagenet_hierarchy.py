"""Build src/visae/data/imagenet_siblings.json: ImageNet-1k sibling groups from WordNet 3.0.

Rule: every one of the 1000 ImageNet-1k classes is a WordNet 3.0 noun synset (its wnid ``n<offset>``);
classes are grouped by their *first direct hypernym* (``synset.hypernyms()[0]``, or the first instance
hypernym when a synset has none); a group is kept when it holds at least 3 classes (paper §4.4, Table 2:
minimum group size 3).

Inputs: the ImageNet-1k class list and lemma names shipped inside timm (``timm/data/_info/imagenet_synsets.txt``,
``imagenet_synset_to_lemma.txt``) and WordNet 3.0 from the Debian package ``wordnet-base``
(``apt-get install -y wordnet-base``; files in /usr/share/wordnet), read with nltk's WordNet reader
(``pip install nltk``; needed by this script only, not by visae at run time).

Usage: ``python scripts/build_imagenet_hierarchy.py [--wordnet-dir /usr/share/wordnet] [--out PATH]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import re
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

MIN_SIZE = 3


def _stage_wordnet(src: Path, dst: Path) -> None:
    """Copy the Debian database files into ``dst`` and add the ``lexnames`` file nltk expects.

    Debian's wordnet-base omits ``lexnames``; its content is the fixed table of lexnames(5WN), rebuilt here
    from the installed man page (``index<TAB>name<TAB>category``).
    """
    for f in src.iterdir():
        if f.is_file():
            shutil.copyfile(f, dst / f.name)  # copies: nltk refuses links that resolve outside its root
    man = Path("/usr/share/man/man5/lexnames.5WN.gz")
    rows = re.findall(r"^(\d\d)\t(\S+)\s*\t", gzip.decompress(man.read_bytes()).decode(), flags=re.M)
    if len(rows) != 45:
        raise SystemExit(f"{man}: expected 45 lexicographer file names, found {len(rows)}")
    category = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
    (dst / "lexnames").write_text("".join(f"{i}\t{n}\t{category[n.split('.')[0]]}\n" for i, n in rows))


def main() -> None:
    """Read timm's class list and WordNet, group by first hypernym, write the JSON file."""
    import nltk
    import timm
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wordnet-dir", default="/usr/share/wordnet")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "src/visae/data/imagenet_siblings.json"))
    args = ap.parse_args()

    info = Path(timm.__file__).parent / "data" / "_info"
    wnids = (info / "imagenet_synsets.txt").read_text().split()
    lemma = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
                 if "\t" in line)
    if len(wnids) != 1000:
        raise SystemExit(f"{info}/imagenet_synsets.txt: expected 1000 wnids, found {len(wnids)}")

    staged = tempfile.mkdtemp(prefix="wordnet30_")
    _stage_wordnet(Path(args.wordnet_dir), Path(staged))
    nltk.data.path.append(staged)  # nltk only reads from authorized data paths

    class WordNet30(WordNetCorpusReader):  # type: ignore[misc]
        def map_wn(self, version: str = "wordnet") -> None:
            return None  # no cross-version mapping: we read WordNet 3.0 itself (nltk looks for its own copy)

    wn = WordNet30(staged, None)
    by_parent: dict[str, list[str]] = defaultdict(list)
    parent_name: dict[str, str] = {}
    for wnid in wnids:
        syn = wn.synset_from_pos_and_offset("n", int(wnid[1:]))
        parents = syn.hypernyms() or syn.instance_hypernyms()
        if not parents:
            continue
        p = parents[0]
        pid = f"n{p.offset():08d}"
        by_parent[pid].append(wnid)
        parent_name[pid] = p.lemma_names()[0].replace("_", " ")
    groups = {f"{parent_name[pid]} ({pid})": sorted(members)
              for pid, members in sorted(by_parent.items()) if len(members) >= MIN_SIZE}
    aliases = {}
    for wnid in wnids:
        names = lemma.get(wnid, "")
        aliases[names] = wnid
        aliases[names.split(",")[0].strip()] = wnid
    doc = {
        "name": "imagenet",
        "groups": groups,
        "aliases": dict(sorted(aliases.items())),
        "provenance": {
            "source": f"WordNet {wn.get_version()} (Debian wordnet-base), ImageNet-1k wnids from timm {timm.__version__}",
            "rule": "siblings = ImageNet-1k classes sharing the same first direct WordNet hypernym "
                    "(hypernyms()[0], else instance_hypernyms()[0]); groups with >= 3 classes",
            "script": "scripts/build_imagenet_hierarchy.py",
            "date": dt.date.today().isoformat(),
            "n_groups": len(groups),
            "n_classes": sum(len(v) for v in groups.values()),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out)
    print(f"{out}: {len(groups)} groups covering {doc['provenance']['n_classes']} classes")


if __name__ == "__main__":
    main()
