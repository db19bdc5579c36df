"""Files of a Debian package, fetched without installing it (no root): apt's mirror, a verified ``.deb``.

Routes, in order: ``apt-get download`` when apt's package lists know the package (apt verifies it; we
check its SHA256 against ``apt-cache show`` again), else the mirrors named in apt's configuration
(``/etc/apt/sources.list`` and ``sources.list.d/*.list`` one-line entries, ``*.sources`` deb822 stanzas):
the suite's ``InRelease`` (its signature checked with ``gpgv`` when the entry names a ``Signed-By``
keyring), the ``Packages`` index whose SHA256 ``InRelease`` lists, and the ``.deb`` whose SHA256 and size
the index lists. The ``.deb`` is an ``ar`` archive; the wanted files are taken from its ``data.tar.*``.
Nothing here names a mirror: every address comes from the apt configuration.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from visae.errors import DataError
from visae.io import atomic_write_bytes

APT_ETC = Path("/etc/apt")
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class AptSource:
    """One ``deb`` entry of apt's configuration: a mirror URI, a suite and its components."""

    uri: str
    suite: str
    components: tuple[str, ...] = ()
    signed_by: str | None = None
    origin: str = ""


@dataclass(frozen=True)
class PackageRecord:
    """A package's stanza in a ``Packages`` index, with the mirror it came from."""

    package: str
    version: str
    filename: str
    sha256: str
    size: int
    base_uri: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Address of the ``.deb``."""
        return f"{self.base_uri.rstrip('/')}/{self.filename}"


# ----------------------------------------------------------------------------------------- apt config
def parse_stanzas(text: str) -> list[dict[str, str]]:
    """RFC-822-style stanzas (deb822 sources, Packages, Release) as dicts; continuation lines joined by
    '\\n'."""
    out: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    last = ""
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if cur:
                out.append(cur)
            cur, last = {}, ""
            continue
        if raw[0] in " \t" and last:
            cur[last] += "\n" + raw.strip()
            continue
        key, sep, value = raw.partition(":")
        if sep:
            last = key.strip()
            cur[last] = value.strip()
    if cur:
        out.append(cur)
    return out


def _parse_deb822(text: str, origin: str) -> list[AptSource]:
    out = []
    for st in parse_stanzas(text):
        fields = {k.lower(): v for k, v in st.items()}
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        signed = fields.get("signed-by", "").strip() or None
        if signed and "\n" in signed:
            signed = None  # an inline key block: not a path gpgv can read
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                out.append(AptSource(uri, suite, tuple(fields.get("components", "").split()), signed, origin))
    return out


def _parse_one_line(text: str, origin: str) -> list[AptSource]:
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb ") and not line.startswith("deb\t"):
            continue
        rest = line[3:].strip()
        signed = None
        if rest.startswith("["):
            opts, _, rest = rest[1:].partition("]")
            for opt in opts.split():
                k, _, v = opt.partition("=")
                if k == "signed-by":
                    signed = v
        parts = rest.split()
        if len(parts) >= 2:
            out.append(AptSource(parts[0], parts[1], tuple(parts[2:]), signed, origin))
    return out


def read_apt_sources(etc: Path | None = None) -> list[AptSource]:
    """Every enabled ``deb`` entry of ``sources.list``, ``sources.list.d/*.list`` and ``*.sources``."""
    etc = APT_ETC if etc is None else etc
    files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list")),
             *sorted((etc / "sources.list.d").glob("*.sources"))]
    out: list[AptSource] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        out.extend(_parse_deb822(text, str(f)) if f.suffix == ".sources" else _parse_one_line(text, str(f)))
    return out


def host_arch() -> str:
    """Debian architecture name of this machine (``dpkg --print-architecture`` when dpkg exists)."""
    if shutil.which("dpkg"):
        try:
            return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                                  check=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    m = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf", "i686": "i386",
            "ppc64le": "ppc64el"}.get(m, m)


# -------------------------------------------------------------------------------------- downloading
def fetch_bytes(url: str, timeout: float = TIMEOUT_S) -> bytes:
    """GET ``url`` (http, https or file); OSError on failure."""
    with urllib.request.urlopen(url, timeout=timeout) as r:  # addresses come from apt's config
        data: bytes = r.read()
    return data


def sha256_hex(data: bytes) -> str:
    """Hex SHA256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _decompress(name: str, data: bytes) -> bytes:
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".gz"):
        return gzip.decompress(data)
    if name.endswith(".bz2"):
        return bz2.decompress(data)
    if name.endswith(".zst"):
        return _unzstd(data)
    return data


def _unzstd(data: bytes) -> bytes:
    try:
        import zstandard  # type: ignore[import-not-found]

        return bytes(zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read())
    except ImportError:
        pass
    if shutil.which("zstd") is None:
        raise DataError("a zstd-compressed archive needs the 'zstandard' Python package or the zstd tool")
    return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout


def _release_hashes(text: str) -> dict[str, tuple[str, int]]:
    """``path → (sha256, size)`` from a Release file's SHA256 field."""
    out: dict[str, tuple[str, int]] = {}
    for st in parse_stanzas(text):
        for line in st.get("SHA256", "").splitlines():
            parts = line.split()
            if len(parts) == 3:
                out[parts[2]] = (parts[0].lower(), int(parts[1]))
    return out


def _verified_release(src: AptSource, dist_url: str) -> str:
    """The suite's Release text; a signed InRelease is checked with gpgv when the entry names a keyring."""
    try:
        raw = fetch_bytes(f"{dist_url}/InRelease")
    except OSError:
        if src.signed_by:
            raise OSError(f"{dist_url}/InRelease unreachable and a signature is required") from None
        return fetch_bytes(f"{dist_url}/Release").decode("utf-8", errors="replace")
    if src.signed_by and Path(src.signed_by).is_file() and shutil.which("gpgv"):
        with tempfile.TemporaryDirectory() as tmp:
            signed = Path(tmp) / "InRelease"
            signed.write_bytes(raw)
            r = subprocess.run(["gpgv", "--keyring", src.signed_by, "--output", str(Path(tmp) / "out"),
                                str(signed)], capture_output=True, timeout=60)
            if r.returncode != 0:
                raise OSError(f"{dist_url}/InRelease: bad signature for keyring {src.signed_by}")
            raw = (Path(tmp) / "out").read_bytes()
    return raw.decode("utf-8", errors="replace")


def _index_paths(src: AptSource, arch: str) -> list[str]:
    if src.suite.endswith("/"):  # a flat repository: the index sits beside the Release file
        return ["Packages"]
    return [f"{comp}/binary-{a}/Packages" for comp in src.components for a in ("all", arch)]


def _dist_url(src: AptSource) -> str:
    base = src.uri.rstrip("/")
    return f"{base}/{src.suite.rstrip('/')}" if src.suite.endswith("/") else f"{base}/dists/{src.suite}"


def find_in_index(package: str, src: AptSource, arch: str) -> PackageRecord | None:
    """The package's record in one source's Packages indices (each verified against the Release hashes)."""
    dist = _dist_url(src)
    hashes = _release_hashes(_verified_release(src, dist))
    for path in _index_paths(src, arch):
        for ext in (".xz", ".gz", ""):
            if f"{path}{ext}" not in hashes:
                continue
            want, size = hashes[f"{path}{ext}"]
            data = fetch_bytes(f"{dist}/{path}{ext}")
            if len(data) != size or sha256_hex(data) != want:
                raise OSError(f"{dist}/{path}{ext}: SHA256 or size differs from the Release file")
            rec = _record(package, _decompress(ext, data).decode("utf-8", errors="replace"), src.uri)
            if rec is not None:
                return rec
            break
    return None


def _record(package: str, index_text: str, base_uri: str) -> PackageRecord | None:
    best: PackageRecord | None = None
    for st in parse_stanzas(index_text):
        if st.get("Package") != package or "Filename" not in st or "SHA256" not in st:
            continue
        rec = PackageRecord(package, st.get("Version", ""), st["Filename"], st["SHA256"].lower(),
                            int(st.get("Size", "-1")), base_uri, st)
        if best is None or _newer(rec.version, best.version):
            best = rec
    return best


def _newer(a: str, b: str) -> bool:
    if shutil.which("dpkg"):
        try:
            return subprocess.run(["dpkg", "--compare-versions", a, "gt", b], timeout=10).returncode == 0
        except (OSError, subprocess.SubprocessError):
            pass
    return a > b


def download_from_mirrors(package: str, sources: Iterable[AptSource], arch: str,
                          log: Callable[[str], None] = lambda s: None) -> bytes:
    """The verified ``.deb`` bytes from the first source whose index lists ``package``; OSError if none."""
    problems: list[str] = []
    for src in sources:
        try:
            rec = find_in_index(package, src, arch)
        except (OSError, ValueError, lzma.LZMAError, EOFError) as e:
            problems.append(f"{src.uri} {src.suite}: {e}")
            continue
        if rec is None:
            continue
        log(f"{package}: downloading {rec.filename} ({rec.size / 1e6:.1f} MB) from {rec.base_uri}")
        try:
            data = fetch_bytes(rec.url)
        except OSError as e:
            problems.append(f"{rec.url}: {e}")
            continue
        if sha256_hex(data) != rec.sha256 or (rec.size >= 0 and len(data) != rec.size):
            problems.append(f"{rec.url}: SHA256 or size differs from the index")
            continue
        return data
    detail = "; ".join(problems) if problems else "no apt source lists it"
    raise OSError(f"{package} not fetched from the apt mirrors ({detail})")


def download_with_apt(package: str) -> bytes:
    """``apt-get download`` into a temporary folder (no root needed); SHA256 checked against apt-cache."""
    if shutil.which("apt-get") is None or shutil.which("apt-cache") is None:
        raise OSError("apt-get is not available")
    show = subprocess.run(["apt-cache", "show", "--no-all-versions", package], capture_output=True, text=True,
                          timeout=60)
    stanzas = parse_stanzas(show.stdout) if show.returncode == 0 else []
    if not stanzas or "SHA256" not in stanzas[0]:
        raise OSError(f"apt's package lists do not know {package} (apt-get update has not been run)")
    want = stanzas[0]["SHA256"].lower()
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run(["apt-get", "download", "-q", package], cwd=tmp, capture_output=True, text=True,
                           timeout=600)
        debs = list(Path(tmp).glob("*.deb"))
        if r.returncode != 0 or len(debs) != 1:
            raise OSError(f"apt-get download {package} failed: {(r.stderr or r.stdout).strip()[-300:]}")
        data = debs[0].read_bytes()
    if sha256_hex(data) != want:
        raise OSError(f"apt-get download {package}: SHA256 differs from apt-cache show")
    return data


# -------------------------------------------------------------------------------------- extraction
def ar_members(data: bytes) -> dict[str, bytes]:
    """Members of an ``ar`` archive (a ``.deb``) by name; ValueError when it is not one."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive (a .deb starts with '!<arch>')")
    out: dict[str, bytes] = {}
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        if header[58:60] != b"`\n":
            raise ValueError(f"corrupt ar header at byte {pos}")
        name = header[:16].decode("ascii", errors="replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = data[pos + 60:pos + 60 + size]
        if len(body) != size:
            raise ValueError(f"ar member {name!r} is truncated")
        out[name] = body
        pos += 60 + size + (size % 2)
    return out


def extract_deb(deb: bytes, folder_in_package: str, dest: Path) -> list[Path]:
    """Write the regular files directly under ``folder_in_package`` of the ``.deb``'s data into ``dest``."""
    members = ar_members(deb)
    data_name = next((n for n in members if n.startswith("data.tar")), None)
    if data_name is None:
        raise ValueError("the .deb has no data.tar member")
    tar_bytes = _decompress(data_name, members[data_name])
    want = folder_in_package.strip("/")
    written = []
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        for info in tar.getmembers():
            parent, _, name = info.name.lstrip("./").rpartition("/")
            if not info.isfile() or parent != want or not name or name in (".", ".."):
                continue
            f = tar.extractfile(info)
            if f is None:
                continue
            atomic_write_bytes(dest / name, f.read())
            written.append(dest / name)
    return written


def fetch_package_files(package: str, folder_in_package: str, dest: Path, *, use_apt: bool = True,
                        etc: Path | None = None, arch: str | None = None,
                        log: Callable[[str], None] = lambda s: None) -> list[Path]:
    """Fetch ``package``'s ``.deb`` (apt-get download, else apt's mirrors) and extract one folder into
    ``dest``.

    OSError lists every route tried and why it failed.
    """
    problems = []
    deb: bytes | None = None
    if use_apt:
        try:
            deb = download_with_apt(package)
            log(f"{package}: downloaded with apt-get")
        except (OSError, subprocess.SubprocessError) as e:
            problems.append(str(e))
    if deb is None:
        sources = read_apt_sources(etc)
        if not sources:
            problems.append(f"no deb entries in {etc or APT_ETC}/sources.list(.d)")
        else:
            try:
                deb = download_from_mirrors(package, sources, arch or host_arch(), log)
            except OSError as e:
                problems.append(str(e))
    if deb is None:
        raise OSError("; ".join(problems))
    dest.mkdir(parents=True, exist_ok=True)
    try:
        files = extract_deb(deb, folder_in_package, dest)
    except (ValueError, tarfile.TarError, lzma.LZMAError, EOFError, OSError) as e:
        raise OSError(f"{package}: cannot unpack the .deb ({e})") from None
    if not files:
        raise OSError(f"{package}: the .deb has no files in /{folder_in_package.strip('/')}")
    os.utime(dest)
    return files
