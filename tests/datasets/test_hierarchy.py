"""Label hierarchies: the shipped ImageNet WordNet groups, Fashion-MNIST, user files, 'auto'."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visae.datasets.hierarchy import load_hierarchy, package_hierarchy, read_hierarchy_file
from visae.errors import ConfigError

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def imagenet_wnids() -> list[str]:
    import timm

    return (Path(timm.__file__).parent / "data" / "_info" / "imagenet_synsets.txt").read_text().split()


def test_imagenet_groups_are_wordnet_siblings_with_provenance() -> None:
    h = package_hierarchy("imagenet")
    wnids = imagenet_wnids()
    groups = h.sibling_groups(wnids)
    assert len(groups) == h.provenance["n_groups"] > 50
    assert all(len(g) >= 3 for g in groups)
    assert "WordNet 3.0" in h.provenance["source"] and h.provenance["script"] == "scripts/build_imagenet_hierarchy.py"
    # WordNet 3.0: Persian, Siamese, Egyptian cat and tabby/tiger cat share the hypernym domestic cat (n02121808)
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
