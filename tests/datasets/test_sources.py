"""Image sources: ImageFolder trees with awkward files, offline sets, Fashion-MNIST, HF, subsets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from visae.datasets.images import load_image_file, to_rgb
from visae.datasets.registry import known_sources, open_source
from visae.datasets.subset import stratified_split, subset_indices
from visae.errors import DataError


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "imgs"
    (root / "n01440764").mkdir(parents=True)
    (root / "n01443537").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3),
                                     dtype=np.uint8)).save(root / "n01440764" / f"a{i}.png")
        Image.fromarray(rng.integers(0, 255, (20, 24, 3),
                                     dtype=np.uint8)).save(root / "n01443537" / f"b{i}.JPEG")
    Image.fromarray(rng.integers(0, 255, (9, 9), dtype=np.uint8),
                    mode="L").save(root / "n01443537" / "gray.png")
    Image.new("CMYK", (8, 8), (0, 255, 0, 0)).save(root / "n01443537" / "cmyk.jpg")
    arr16 = np.full((6, 6), 65535, dtype=np.uint16)
    arr16[0, 0] = 257 * 10
    Image.fromarray(arr16).save(root / "n01440764" / "deep16.png")
    (root / "n01440764" / "notes.txt").write_text("not an image")
    (root / "n01440764" / "zero.png").write_bytes(b"")
    good = (root / "n01440764" / "a0.png").read_bytes()
    (root / "n01443537" / "trunc.png").write_bytes(good[: len(good) // 2])
    (root / "n01443537" / "junk.jpg").write_bytes(b"\xff\xd8\xff garbage" * 10)
    return root


def test_folder_layout_ids_and_errors(tree):
    src = open_source(f"folder:{tree}")
    assert src.class_names == ["n01440764", "n01443537"]
    ids = [src.image_id(i) for i in range(len(src))]
    assert "n01440764/notes.txt" not in ids
    assert ids[:5] == ["n01440764/a0.png", "n01440764/a1.png", "n01440764/a2.png", "n01440764/deep16.png",
                       "n01440764/zero.png"]
    assert list(src.labels) == [0] * 5 + [1] * 7
    bad = {}
    for i in range(len(src)):
        try:
            img = src.load(i)
            assert img.mode == "RGB"
        except DataError as e:
            bad[ids[i]] = str(e)
    assert set(bad) == {"n01440764/zero.png", "n01443537/trunc.png", "n01443537/junk.jpg"}
    for name, msg in bad.items():
        assert name.split("/")[1] in msg
    assert "0 bytes" in bad["n01440764/zero.png"]
    # 16-bit: scaled, not clipped (65535 → 255, 2570 → 10)
    deep = np.asarray(src.load(ids.index("n01440764/deep16.png")))
    assert deep[1, 1].tolist() == [255, 255, 255] and deep[0, 0].tolist() == [10, 10, 10]
    cmyk = np.asarray(src.load(ids.index("n01443537/cmyk.jpg")))
    assert cmyk[4, 4, 0] > 200 and cmyk[4, 4, 1] < 60  # magenta-free red-ish? no: C=0,M=255 → (255,0,255)
    gray = src.load(ids.index("n01443537/gray.png"))
    assert gray.size == (9, 9)


def test_imagenet_split_subfolders(tmp_path):
    for split in ("train", "val"):
        d = tmp_path / split / "n0000001"
        d.mkdir(parents=True)
        Image.new("RGB", (4, 4), (1, 2, 3)).save(d / f"{split}.png")
    assert open_source(f"folder:{tmp_path}", split="val").image_id(0) == "n0000001/val.png"
    assert open_source(f"folder:{tmp_path}", split="test").image_id(0) == "n0000001/val.png"
    assert open_source(str(tmp_path), split="train").image_id(0) == "n0000001/train.png"


@pytest.mark.parametrize(("mode", "value", "want"), [
    ("L", 7, [7, 7, 7]),
    ("LA", (9, 0), [9, 9, 9]),
    ("RGBA", (1, 2, 3, 0), [1, 2, 3]),
    ("I;16", 32768, [128, 128, 128]),
    ("I", 65535, [255, 255, 255]),
    ("F", 0.5, [128, 128, 128]),
    ("1", 1, [255, 255, 255]),
    ("CMYK", (0, 0, 0, 0), [255, 255, 255]),
])
def test_to_rgb_modes(mode, value, want):
    out = to_rgb(Image.new(mode, (3, 2), value))
    assert out.mode == "RGB" and np.asarray(out)[0, 0].tolist() == want


def test_palette_to_rgb():
    p = Image.new("P", (2, 2), 1)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert np.asarray(to_rgb(p))[0, 0].tolist() == [10, 20, 30]


def test_decompression_bomb_is_data_error(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match=r"big\.png: image too large"):
        load_image_file(p)


def test_stratified_split_and_subset():
    labels = np.repeat(np.arange(4), [10, 20, 5, 1])
    tr, te = stratified_split(labels)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == len(labels)
    assert np.bincount(labels[te], minlength=4).tolist() == [2, 4, 1, 0]
    assert np.array_equal(stratified_split(labels)[1], te)
    sub = subset_indices(labels, 12, seed=3)
    assert len(sub) == 12 and np.all(np.diff(sub) > 0)
    assert np.bincount(labels[sub], minlength=4).tolist() == [3, 7, 2, 0]
    assert np.array_equal(sub, subset_indices(labels, 12, seed=3))
    assert not np.array_equal(sub, subset_indices(labels, 12, seed=4))


def _have_hf() -> bool:
    try:
        import datasets
    except ImportError:
        return False
    return hasattr(datasets, "load_dataset")


@pytest.mark.skipif(not _have_hf(), reason="extra [hf] not installed")
def test_hf_saved_dataset(tmp_path):
    import datasets

    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    imgs = [Image.new("L", (5, 5), i * 40) for i in range(4)]
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"image": imgs, "label": [0, 1, 0, 1]},
                                                                   features=feats),
                               "validation": datasets.Dataset.from_dict({"image": imgs[:2], "label": [1, 0]},
                                                                        features=feats)})
    ds.save_to_disk(str(tmp_path / "ds"))
    src = open_source(f"hf:{tmp_path / 'ds'}", "val")
    assert len(src) == 2 and src.class_names == ["cat", "dog"] and src.image_id(1) == "validation/000001"
    assert list(src.labels) == [1, 0] and src.load(1).mode == "RGB"
    assert src.load(1).getpixel((0, 0)) == (40, 40, 40)
    assert len(open_source(f"hf:{tmp_path / 'ds'}:train")) == 4


def test_unknown_spec():
    with pytest.raises(DataError, match="unknown spec"):
        open_source("nope:thing")
    with pytest.raises(DataError, match="unknown offline set"):
        open_source("offline:cifar")
    assert "offline:digits" in known_sources()


def test_subset_spec_is_the_same_from_a_spec_or_a_source_object():
    """The cache writer subsets an already-open source; its spec (part of the cache hash) must match."""
    from visae.cache.config import CacheConfig
    from visae.cache.naming import resolve_inputs as _resolve

    cfg = CacheConfig(max_images=30, subset_seed=3, stratified=False)
    bb = object()
    _, from_spec = _resolve(bb, "offline:digits", cfg)  # type: ignore[arg-type]
    _, from_object = _resolve(bb, open_source("offline:digits", "train"), cfg)  # type: ignore[arg-type]
    assert from_spec.spec == from_object.spec == "offline:digits#random-30-seed3"
    assert from_spec.fingerprint() == from_object.fingerprint()


def test_register_source_plugin_and_duplicates():
    from visae.datasets.registry import SOURCES, register_source
    from visae.datasets.subset import ArraySource

    @register_source("planted", usage="planted:N")
    def open_planted(argument: str, split: str) -> ArraySource:
        n = int(argument)
        images = np.zeros((n, 8, 8), dtype=np.uint8)
        return ArraySource(f"planted:{n}", split, images, np.arange(n) % 2, ["a", "b"],
                           [str(i) for i in range(n)])

    try:
        src = open_source("planted:6", "test", max_images=4, seed=0)
        assert len(src) == 4 and src.spec == "planted:6#stratified-4-seed0" and src.split == "test"
        assert "planted:N" in known_sources()
        with pytest.raises(DataError, match="image source 'planted' is already registered"):
            register_source("planted", open_planted)
        with pytest.raises(DataError, match="unknown spec"):
            open_source("planted")  # takes an argument; the bare name is not a spec
    finally:
        SOURCES.unregister("planted")
    with pytest.raises(DataError, match="unknown spec"):
        open_source("planted:6")
