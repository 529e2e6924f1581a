"""The authors' released checkpoints, fetched on request into `.cache/weights/` (stdlib only).

Only `python -m export --weights-from authors` (`make models WEIGHTS=authors`) calls this; nothing
else in the project touches the network. A checkpoint is fetched from the `url` its registry entry
(`colorizers.weights`) records and is accepted only with the SHA-256 registered beside it:

- a cached file whose hash is right is used as it is, without a request;
- a download streams into a temporary file in the cache folder, at most `MAX_BYTES`; its length
  must equal the Content-Length the server announced and its SHA-256 the registered one; only then
  is it renamed (atomically) to its cached name. On any failure the partial file is deleted.

Every failure is a `FetchError` whose message is one line naming the URL and the cause.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from colorizers import weights
from colorizers.weights import Checkpoint

log = logging.getLogger("export.fetch")

REPO = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO / ".cache" / "weights"  # gitignored (.cache/)
MAX_BYTES = 200 * 1024 * 1024  # the releases are 123 MiB (ECCV16) and 130 MiB (SIGGRAPH17)
TIMEOUT_S = 30.0  # per socket operation (connect, each read), not for the whole download
CHUNK = 1 << 20

# The authors' release for each architecture they published (Larsson16: none in PyTorch).
AUTHORS = {"eccv16": "eccv16-official", "siggraph17": "siggraph17-official"}


class FetchError(RuntimeError):
    """A checkpoint could not be fetched or was refused; the message is one line."""


def cached_path(checkpoint: Checkpoint, cache_dir: Path | None = None) -> Path:
    """Where the checkpoint is cached: the URL's file name (the authors' own)."""
    cache_dir = CACHE_DIR if cache_dir is None else cache_dir
    name = Path(urllib.parse.urlsplit(checkpoint.url).path).name
    if not name:
        raise FetchError(f"{checkpoint.name}: no file name in its url {checkpoint.url!r}")
    return cache_dir / name


def fetch(
    checkpoint: Checkpoint,
    cache_dir: Path | None = None,
    *,
    offline: bool = False,
    max_bytes: int = MAX_BYTES,
    timeout: float = TIMEOUT_S,
) -> Path:
    """The cached file of `checkpoint`, downloaded first unless a verified copy is cached.

    `offline`: never make a request; a checkpoint not (correctly) cached is a FetchError.
    """
    if not checkpoint.url or not checkpoint.sha256:
        raise FetchError(f"{checkpoint.name}: the registry records no url and SHA-256 to fetch it by")
    cache_dir = CACHE_DIR if cache_dir is None else cache_dir
    target = cached_path(checkpoint, cache_dir)
    if target.is_file():
        digest = weights.sha256_of(target)
        if digest == checkpoint.sha256:
            log.info("%s: cached %s (sha256 verified)", checkpoint.name, target)
            return target
        log.warning("%s: cached %s has sha256 %s, not %s: discarded", checkpoint.name, target, digest,
                    checkpoint.sha256)  # fmt: skip
        target.unlink()
    if offline:
        raise FetchError(
            f"{checkpoint.name} is not in {cache_dir} and this export may not use the network "
            f"(fetch it once from {checkpoint.url} with `make models WEIGHTS=authors`)"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=cache_dir, prefix=f".{target.name}.", suffix=".part")
    partial = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            size, digest = _download(checkpoint.url, out, max_bytes=max_bytes, timeout=timeout)
        if digest != checkpoint.sha256:
            raise FetchError(
                f"{checkpoint.url}: sha256 {digest} is not the registered {checkpoint.sha256} "
                f"of {checkpoint.name}: refused, nothing cached"
            )
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    log.info(
        "%s: fetched %s (%d bytes, sha256 verified) -> %s", checkpoint.name, checkpoint.url, size, target
    )
    return target


def _download(url: str, out: BinaryIO, *, max_bytes: int, timeout: float) -> tuple[int, str]:
    """Stream `url` into `out`: (bytes written, their SHA-256). Checks the size limit and length."""
    request = urllib.request.Request(url, headers={"User-Agent": "priorlab-export"})
    digest = hashlib.sha256()
    size = 0
    try:
        # A fresh opener per call: proxies are read from the environment now, not at first use.
        with urllib.request.build_opener().open(request, timeout=timeout) as response:
            announced = response.headers.get("Content-Length")
            expected = int(announced) if announced is not None and announced.isdigit() else None
            if expected is not None and expected > max_bytes:
                raise FetchError(f"{url}: Content-Length {expected} exceeds the {max_bytes}-byte limit")
            log.info("downloading %s (%s bytes)", url, expected if expected is not None else "unknown")
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(f"{url}: more than the {max_bytes}-byte limit: refused")
                digest.update(chunk)
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise FetchError(f"cannot reach {url}: {_one_line(exc.reason)}") from exc
    except (OSError, http.client.HTTPException) as exc:  # resets, timeouts, IncompleteRead mid-body
        raise FetchError(f"{url}: download failed after {size} bytes: {_one_line(exc)}") from exc
    # http.client ends a body cut short by a closed connection as if it were complete: check it here.
    if expected is not None and size != expected:
        raise FetchError(f"{url}: truncated download, {size} of {expected} bytes (Content-Length): refused")
    return size, digest.hexdigest()


def _one_line(reason: object) -> str:
    text = " ".join(str(reason).split())
    return text or type(reason).__name__


def fetch_authors(
    architectures: set[str], cache_dir: Path | None = None, *, offline: bool = False
) -> dict[str, tuple[Checkpoint, Path]]:
    """The authors' release for each of `architectures` that has one: arch -> (checkpoint, file)."""
    found = {}
    for arch in sorted(architectures & AUTHORS.keys()):
        checkpoint = weights.REGISTRY[AUTHORS[arch]]
        found[arch] = (checkpoint, fetch(checkpoint, cache_dir, offline=offline))
    return found
