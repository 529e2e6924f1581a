"""The repository stands alone: a fresh clone with nothing beside it runs, tests and benchmarks.

Every tracked text file (plus untracked, not ignored ones, so a slip is caught before it is committed)
is searched for paths that reach outside the repository root: a team folder beside the checkout by a
relative path or by a parent of the repository's root constant, and, in Makefiles, Markdown command
lines and links, container and CI files, a `../` that resolves outside the root. Photos the tests need
live in samples/, listed with their licences in samples/README.md (checked below).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
SKIPPED = {"requirements.lock"}  # pinned wheels' hashes, no paths

# (what it is, pattern) for every text file. The plain word "shared" (shared memory) is never flagged.
ANYWHERE = (
    ("a relative path to a folder beside the checkout", re.compile(r"\.\.[/\\]+shared\b")),
    ("a folder beside the checkout, joined to '..'", re.compile(r"[\"']\.\.[\"']\)?\s*[,/]\s*[\"']shared")),
    (
        "a parent of a path joined with a folder beside it",
        re.compile(r"\.parents?\b(\[\d+\])?\s*/\s*[\"']shared"),
    ),
    ("the parent of the repository root", re.compile(r"\b(REPO|ROOT|REPO_ROOT)\.parent\b(?!s)")),
)
# `../` as a path, not `.../` (an ellipsis) or a word ending in dots.
DOTDOT = re.compile(r"(?<![\w.])\.\./[^\s`'\")\]]*")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`([^`]+)`")
# Files whose lines are commands run from the repository root (make, docker, compose, CI).
COMMAND_FILES = re.compile(
    r"(^|/)(Makefile|[^/]*\.mk|Dockerfile[^/]*|compose[^/]*\.ya?ml|\.ci/[^/]+|[^/]*\.sh)$"
)


def repository_files() -> list[str]:
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc}): the file list comes from git")
    return sorted({name for name in listing.decode().split("\0") if name})


def text_of(name: str) -> str | None:
    """The file's text, or None for a binary, missing (deleted, not yet staged) or skipped file."""
    path = REPO / name
    if PurePosixPath(name).name in SKIPPED or not path.is_file():
        return None
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def escapes(base: PurePosixPath, target: str) -> bool:
    """Whether `target`, relative to `base` (a folder inside the repository), leaves the repository."""
    depth = len(base.parts)
    for part in PurePosixPath(target.split("#")[0]).parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return True
    return False


def dotdot_escapes(name: str, text: str) -> Iterator[tuple[int, str]]:
    """(line, path) for `../` paths that leave the repository in command files and Markdown."""
    folder = PurePosixPath(name).parent
    if COMMAND_FILES.search(name):  # run from the repository root
        for number, line in enumerate(text.splitlines(), 1):
            if not line.lstrip().startswith("#"):
                yield from (
                    (number, m.group()) for m in DOTDOT.finditer(line) if escapes(PurePosixPath(), m.group())
                )
    elif name.endswith(".md"):
        fenced = False
        for number, line in enumerate(text.splitlines(), 1):
            if line.lstrip().startswith(("```", "~~~")):
                fenced = not fenced
                continue
            # Commands (fenced blocks, `inline code`) run from the root; links resolve from the file's folder.
            commands = [line] if fenced else INLINE_CODE.findall(line)
            for command in commands:
                for m in DOTDOT.finditer(command):
                    if escapes(PurePosixPath(), m.group()):
                        yield number, m.group()
            if not fenced:
                for target in MD_LINK.findall(INLINE_CODE.sub("", line)):
                    if "://" not in target and escapes(folder, target):
                        yield number, target


def outside_references() -> list[str]:
    found = []
    for name in repository_files():
        text = text_of(name)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for what, pattern in ANYWHERE:
                if match := pattern.search(line):
                    found.append(f"{name}:{number}: {what}: {match.group()!r}")
        found += [
            f"{name}:{number}: a path outside the repository: {path!r}"
            for number, path in dotdot_escapes(name, text)
        ]
    return found


def test_no_file_reaches_outside_the_repository() -> None:
    found = outside_references()
    assert not found, "paths outside the repository root (use samples/ or a documented flag):\n" + "\n".join(
        found
    )


def spelled(line: str) -> str:
    """The examples below are spelled with placeholders, so that this file does not flag itself."""
    return line.replace("<P>", ".parent").replace("<UP>", "..")


def test_the_patterns_catch_what_they_should_and_not_the_word_shared() -> None:
    flagged = [
        spelled(line)
        for line in (
            'DATA = ROOT<P> / "shared" / "data"',
            'SHARED = REPO<P> / "shared"',
            'Path(__file__).resolve()<P>s[2] / "shared" / "data"',
            "python -m service.client colorize <UP>/shared/data/x.jpg out.png",
            'os.path.join("<UP>", "shared", "data")',
            'Path("<UP>") / "shared"',
        )
    ]
    fine = [
        "PRIORLAB_TRITON_SHARED_MEMORY: tensors through system shared memory",
        "ROOT = Path(__file__).resolve().parents[1]",
        'SAMPLES = ROOT.parents[0] / "samples"',
        "waits... ../ in prose is an ellipsis ...",
    ]
    assert all(any(p.search(line) for _, p in ANYWHERE) for line in flagged)
    assert not any(p.search(line) for line in fine for _, p in ANYWHERE)
    readme = "see [design](docs/design.md) and [up](../README.md)\n```\nmake run ../x\n```\nrun `cat ../y`\n"
    assert [path for _, path in dotdot_escapes("README.md", readme)] == ["../README.md", "../x", "../y"]
    # From a subfolder, a link one level up stays inside; two levels up leaves.
    doc = "[readme](../README.md) [out](../../elsewhere.md)"
    assert [path for _, path in dotdot_escapes("docs/x.md", doc)] == ["../../elsewhere.md"]
    assert [path for _, path in dotdot_escapes("Makefile", "\t$(PY) x.py ../data\n# ../comment\n")] == [
        "../data"
    ]


def test_every_sample_is_listed_with_its_size_and_sha256() -> None:
    """samples/README.md's table names every file in samples/ with its exact size and SHA-256."""
    rows = {}
    for line in (SAMPLES / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 4:
            rows[cells[0].strip("`")] = cells
    present = {p.name for p in SAMPLES.iterdir() if p.is_file() and p.name != "README.md"}
    assert set(rows) == present
    total = 0
    for name, cells in rows.items():
        data = (SAMPLES / name).read_bytes()
        total += len(data)
        if name.endswith(".py"):
            continue
        size, sha = cells[2], cells[3].strip("`")
        assert size == f"{len(data):,} B", name
        assert sha == hashlib.sha256(data).hexdigest(), name
    assert total < 1_500_000  # small enough for every clone
