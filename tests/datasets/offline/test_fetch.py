"""Fetching Fashion-MNIST without root: apt config parsing, a fake mirror (file:// URLs), the real one
(slow)."""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from visae.datasets.offline import debian
from visae.datasets.offline import fashion_mnist as fm
from visae.errors import DataError


def _idx(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return gzip.compress(head + arr.astype(np.uint8).tobytes(), mtime=0)


def _tar_xz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return lzma.compress(buf.getvalue())


def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return out


def fake_deb(n_train: int = 12, n_test: int = 6) -> tuple[bytes, dict[str, np.ndarray]]:
    """A small dataset-fashion-mnist .deb: four IDX files with known content, plus a doc file."""
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": np.arange(n_test) % 10}
    files = {f"./{fm.DEBIAN_FOLDER}/{k}.gz": _idx(v) for k, v in arrays.items()}
    files["./usr/share/doc/dataset-fashion-mnist/copyright"] = b"test"
    deb = _ar({"debian-binary": b"2.0\n", "control.tar.xz": _tar_xz({"./control": b"Package: x\n"}),
               "data.tar.xz": _tar_xz(files)})
    return deb, arrays


def fake_mirror(root: Path, deb: bytes, *, index_sha: str | None = None, deb822: bool = True) -> Path:
    """A mirror folder (served as file://) and an apt config folder pointing at it; returns the config."""
    pool = f"pool/main/d/{fm.DEBIAN_PACKAGE}/{fm.DEBIAN_PACKAGE}_1.0-1_all.deb"
    (root / "mirror" / pool).parent.mkdir(parents=True)
    (root / "mirror" / pool).write_bytes(deb)
    stanza = (f"Package: other\nVersion: 1\nFilename: pool/x.deb\nSHA256: {'0' * 64}\nSize: 1\n\n"
              f"Package: {fm.DEBIAN_PACKAGE}\nVersion: 1.0-1\nArchitecture: all\nFilename: {pool}\n"
              f"Size: {len(deb)}\nSHA256: {index_sha or hashlib.sha256(deb).hexdigest()}\n")
    index = lzma.compress(stanza.encode())
    dist = root / "mirror" / "dists" / "testing"
    (dist / "main" / "binary-all").mkdir(parents=True)
    (dist / "main" / "binary-all" / "Packages.xz").write_bytes(index)
    (dist / "InRelease").write_text(
        "Origin: test\nSuite: testing\nSHA256:\n"
        f" {hashlib.sha256(index).hexdigest()} {len(index)} main/binary-all/Packages.xz\n")
    etc = root / "etc"
    (etc / "sources.list.d").mkdir(parents=True)
    uri = (root / "mirror").as_uri()
    if deb822:
        (etc / "sources.list.d" / "test.sources").write_text(
            f"# a comment\nTypes: deb\nURIs: {uri}\nSuites: testing\nComponents: main\n")
    else:
        (etc / "sources.list").write_text(f"deb [arch=amd64] {uri} testing main\n")
    return etc


@pytest.fixture
def bare_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No installed package, no apt-get, an empty VISAE_HOME, no torchvision download."""
    monkeypatch.setenv("VISAE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VISAE_NO_SYSTEM_DATA", "1")
    monkeypatch.setenv("VISAE_FETCH_NO_APT", "1")
    monkeypatch.delenv("VISAE_FASHION_MNIST_DIR", raising=False)

    def no_download(dest: Path, log: object) -> None:
        raise OSError("no internet in this test")

    monkeypatch.setattr(fm, "_fetch_torchvision", no_download)
    return tmp_path / "home"


def test_apt_sources_both_formats(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text("# deb http://old/ x main\ndeb [arch=amd64 signed-by=/k.gpg] "
                                      "http://a/debian bookworm main contrib\ndeb-src http://a/debian "
                                      "bookworm main\n")
    (etc / "sources.list.d" / "b.sources").write_text(
        "Types: deb deb-src\nURIs: http://b/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/k.gpg\n\nTypes: deb\nURIs: http://c/\nSuites: x\nComponents: main\n"
        "Enabled: no\n")
    (etc / "sources.list.d" / "c.sources.disabled").write_text("Types: deb\nURIs: http://d/\nSuites: y\n")
    got = [(s.uri, s.suite, s.components, s.signed_by) for s in debian.read_apt_sources(etc)]
    assert got == [("http://a/debian", "bookworm", ("main", "contrib"), "/k.gpg"),
                   ("http://b/debian", "bookworm", ("main",), "/usr/share/keyrings/k.gpg"),
                   ("http://b/debian", "bookworm-updates", ("main",), "/usr/share/keyrings/k.gpg")]


@pytest.mark.parametrize("deb822", [True, False])
def test_fetch_from_a_fake_mirror(tmp_path: Path, bare_home: Path, monkeypatch: pytest.MonkeyPatch,
                                  deb822: bool) -> None:
    deb, arrays = fake_deb()
    monkeypatch.setattr(debian, "APT_ETC", fake_mirror(tmp_path, deb, deb822=deb822))
    assert fm.find_idx_dir() is None
    folder = fm.fetch_fashion_mnist(log=lambda s: None)
    assert folder == bare_home / "datasets" / "fashion-mnist"
    # the doc file is not
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{k}.gz" for k in arrays)
    from visae.datasets.registry import open_source

    src = open_source("fashion-mnist", "test")  # no fetch again: the copy is found
    assert len(src) == 6 and src.image_id(5) == "test/00005"
    np.testing.assert_array_equal(src.labels, arrays["t10k-labels-idx1-ubyte"])
    np.testing.assert_array_equal(np.asarray(src.load(3).convert("L")), arrays["t10k-images-idx3-ubyte"][3])


def test_open_source_fetches_on_first_use(tmp_path: Path, bare_home: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    deb, _ = fake_deb()
    monkeypatch.setattr(debian, "APT_ETC", fake_mirror(tmp_path, deb))
    from visae.datasets.registry import open_source

    assert len(open_source("fashion-mnist", "train")) == 12
    assert fm.find_idx_dir() == bare_home / "datasets" / "fashion-mnist"


def test_a_tampered_deb_is_refused(tmp_path: Path, bare_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deb, _ = fake_deb()
    monkeypatch.setattr(debian, "APT_ETC", fake_mirror(tmp_path, deb, index_sha="ab" * 32))
    with pytest.raises(DataError) as e:
        fm.fetch_fashion_mnist(log=lambda s: None)
    msg = str(e.value)
    assert "SHA256 or size differs from the index" in msg and "visae data fetch fashion-mnist" in msg
    assert "\n" not in msg and "VISAE_FASHION_MNIST_DIR" in msg
    assert not (bare_home / "datasets" / "fashion-mnist").exists() or not any(
        (bare_home / "datasets" / "fashion-mnist").iterdir())


def test_a_tampered_index_is_refused(tmp_path: Path, bare_home: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    deb, _ = fake_deb()
    etc = fake_mirror(tmp_path, deb)
    index = tmp_path / "mirror" / "dists" / "testing" / "main" / "binary-all" / "Packages.xz"
    index.write_bytes(lzma.compress(b"Package: dataset-fashion-mnist\n"))
    monkeypatch.setattr(debian, "APT_ETC", etc)
    with pytest.raises(DataError, match="differs from the Release file"):
        fm.fetch_fashion_mnist(log=lambda s: None)


def test_no_route_names_what_to_do(tmp_path: Path, bare_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    monkeypatch.setattr(debian, "APT_ETC", tmp_path / "etc")
    with pytest.raises(DataError) as e:
        fm.fetch_fashion_mnist(log=lambda s: None)
    msg = str(e.value)
    assert "no deb entries" in msg and "no internet in this test" in msg and "visae data fetch" in msg


def test_installed_copy_wins_and_can_be_ignored(tmp_path: Path, bare_home: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "usr-share"
    system.mkdir()
    deb, _ = fake_deb(n_train=4, n_test=2)
    debian.extract_deb(deb, fm.DEBIAN_FOLDER, system)
    monkeypatch.setattr(fm, "SEARCH_DIRS", [str(system)])
    assert fm.find_idx_dir() is None  # VISAE_NO_SYSTEM_DATA=1
    monkeypatch.setenv("VISAE_NO_SYSTEM_DATA", "0")
    assert fm.find_idx_dir() == system and fm.fetch_fashion_mnist() == system


def test_ar_reader_refuses_a_non_deb() -> None:
    with pytest.raises(ValueError, match="not an ar archive"):
        debian.ar_members(b"PK\x03\x04 a zip")
    deb, _ = fake_deb()
    with pytest.raises(ValueError, match="truncated"):
        debian.ar_members(deb[: len(deb) // 2])


def test_cli_unknown_dataset_is_one_error_line() -> None:
    r = subprocess.run([sys.executable, "-m", "visae", "data", "fetch", "imagenet"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ")
    assert len(r.stderr.strip().splitlines()) == 1
    assert "fashion-mnist" in r.stderr and "Traceback" not in r.stderr


def _mirror_reachable() -> bool:
    for src in debian.read_apt_sources():
        try:
            debian.fetch_bytes(f"{debian._dist_url(src)}/InRelease", timeout=10)
            return True
        except OSError:
            continue
    return False


@pytest.mark.slow
def test_real_fetch_from_this_machines_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real .deb from the mirror apt is configured with, into an empty VISAE_HOME (installed copy
    ignored)."""
    if not _mirror_reachable():
        pytest.skip("no apt mirror reachable from this machine")
    monkeypatch.setenv("VISAE_HOME", str(tmp_path))
    monkeypatch.setenv("VISAE_NO_SYSTEM_DATA", "1")
    monkeypatch.setenv("VISAE_FETCH_NO_APT", "1")  # the mirror route; apt-get download is the other one
    monkeypatch.delenv("VISAE_FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(fm, "_fetch_torchvision", lambda dest, log: (_ for _ in ()).throw(OSError("off")))
    assert fm.fetch_fashion_mnist(log=lambda s: None) == tmp_path / "datasets" / "fashion-mnist"
    from visae.datasets.registry import open_source

    tr, te = open_source("fashion-mnist", "train"), open_source("fashion-mnist", "test")
    assert (len(tr), len(te)) == (60000, 10000)
    assert np.bincount(tr.labels).tolist() == [6000] * 10 and np.bincount(te.labels).tolist() == [1000] * 10
