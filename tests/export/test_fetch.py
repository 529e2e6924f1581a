"""export.fetch against a local HTTP server this test starts (no other network is ever touched).

The registry entries are replaced (monkeypatch) by ones whose url points at the local server and
whose SHA-256 is that of the file the test serves; the cache folder is a temporary one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from colorizers import weights
from colorizers.eccv16 import ECCVGenerator
from colorizers.weights import Checkpoint
from export import fetch
from export.__main__ import main as export_main
from export.fetch import FetchError


class Served:
    """Files a test serves: path -> (body, Content-Length to announce or None for the true one)."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, int | None]] = {}
        self.requests: list[str] = []
        self.base = ""


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local server is reached directly, whatever proxy the environment names."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def server() -> Iterator[Served]:
    served = Served()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.requests.append(self.path)
            if self.path not in served.files:
                self.send_error(404)
                return
            body, length = served.files[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True  # a short body ends with the connection closed

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    served.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def entry(url: str, sha256: str) -> Checkpoint:
    return dataclasses.replace(weights.REGISTRY["eccv16-official"], url=url, sha256=sha256)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def free_port() -> int:
    """A port nobody listens on (bound and released: connecting to it is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


BODY = bytes(range(256)) * 4096  # 1 MiB, more than one read


def test_the_right_file_is_cached_verified_and_then_used_without_a_request(
    server: Served, tmp_path: Path
) -> None:
    server.files["/release-1234.pth"] = (BODY, None)
    checkpoint = entry(f"{server.base}/release-1234.pth", sha(BODY))
    path = fetch.fetch(checkpoint, tmp_path)
    assert path == tmp_path / "release-1234.pth"
    assert path.read_bytes() == BODY and weights.sha256_of(path) == checkpoint.sha256
    assert server.requests == ["/release-1234.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release-1234.pth"]  # no partial left

    again = fetch.fetch(checkpoint, tmp_path)
    assert again == path and server.requests == ["/release-1234.pth"]  # the cache, no request
    assert fetch.fetch(checkpoint, tmp_path, offline=True) == path


def test_a_cached_file_with_another_hash_is_fetched_again(server: Served, tmp_path: Path) -> None:
    server.files["/w.pth"] = (BODY, None)
    (tmp_path / "w.pth").write_bytes(b"a stale, corrupted copy")
    path = fetch.fetch(entry(f"{server.base}/w.pth", sha(BODY)), tmp_path)
    assert path.read_bytes() == BODY and server.requests == ["/w.pth"]


def test_a_wrong_hash_is_refused_naming_both_and_nothing_is_cached(server: Served, tmp_path: Path) -> None:
    server.files["/w.pth"] = (BODY, None)
    registered = sha(b"what the authors released")
    with pytest.raises(FetchError) as raised:
        fetch.fetch(entry(f"{server.base}/w.pth", registered), tmp_path)
    message = str(raised.value)
    assert registered in message and sha(BODY) in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_download_is_refused_and_nothing_is_cached(server: Served, tmp_path: Path) -> None:
    server.files["/w.pth"] = (BODY, len(BODY) + 4096)  # announces more than it sends, then closes
    with pytest.raises(FetchError, match=r"truncated download, 1048576 of 1052672 bytes"):
        fetch.fetch(entry(f"{server.base}/w.pth", sha(BODY)), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_size_limit_refuses_an_announced_or_streamed_excess(server: Served, tmp_path: Path) -> None:
    server.files["/w.pth"] = (BODY, None)
    with pytest.raises(FetchError, match="exceeds the 1000-byte limit"):
        fetch.fetch(entry(f"{server.base}/w.pth", sha(BODY)), tmp_path, max_bytes=1000)
    server.files["/w.pth"] = (BODY, 10)  # announces 10 bytes, streams a MiB: stopped at the limit
    with pytest.raises(FetchError):
        fetch.fetch(entry(f"{server.base}/w.pth", sha(BODY)), tmp_path, max_bytes=len(BODY) // 2)
    assert list(tmp_path.iterdir()) == []


def test_http_errors_and_offline_misses_are_one_line(server: Served, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"/missing\.pth: HTTP 404"):
        fetch.fetch(entry(f"{server.base}/missing.pth", sha(BODY)), tmp_path)
    with pytest.raises(FetchError, match="may not use the network") as raised:
        fetch.fetch(entry(f"{server.base}/w.pth", sha(BODY)), tmp_path, offline=True)
    assert f"{server.base}/w.pth" in str(raised.value) and "\n" not in str(raised.value)
    assert server.requests == ["/missing.pth"]  # offline made no request
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_host_is_one_clear_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/colorization_release_v2-9b330a0b.pth"
    with pytest.raises(FetchError) as raised:
        fetch.fetch(entry(url, sha(BODY)), tmp_path / "cache", timeout=5)
    message = str(raised.value)
    assert message.startswith(f"cannot reach {url}: ") and "refused" in message.lower()
    assert "\n" not in message and list((tmp_path / "cache").iterdir()) == []


def test_export_without_a_network_says_so_in_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/colorization_release_v2-9b330a0b.pth"
    monkeypatch.setitem(weights.REGISTRY, "eccv16-official", entry(url, sha(BODY)))
    monkeypatch.setattr(fetch, "CACHE_DIR", tmp_path / "cache")
    repository = tmp_path / "repository"
    assert (
        export_main(["--repository", str(repository), "--model", "eccv16", "--weights-from", "authors"]) == 1
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and url in err and "refused" in err.lower(), err
    assert not repository.exists()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_export_from_authors_fetches_once_and_the_config_names_the_checkpoint(
    server: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small stand-in for the authors' ECCV16 release: a width-1/8 network's state_dict.
    torch.manual_seed(0)
    checkpoint_file = tmp_path / "stand-in.pth"
    torch.save(ECCVGenerator(width=0.125).state_dict(), checkpoint_file)
    data = checkpoint_file.read_bytes()
    server.files["/colorization_release_v2-9b330a0b.pth"] = (data, None)
    stand_in = dataclasses.replace(
        entry(f"{server.base}/colorization_release_v2-9b330a0b.pth", sha(data)), width=0.125
    )
    monkeypatch.setitem(weights.REGISTRY, "eccv16-official", stand_in)
    monkeypatch.setattr(fetch, "CACHE_DIR", tmp_path / "cache")
    repository = tmp_path / "repository"
    args = ["--repository", str(repository), "--model", "eccv16", "--weights-from", "authors"]
    assert export_main(args) == 0
    assert (tmp_path / "cache" / "colorization_release_v2-9b330a0b.pth").read_bytes() == data
    config = (repository / "eccv16" / "configs" / "cpu.pbtxt").read_text()
    assert '"eccv16-official"' in config and sha(data) in config
    ((arch, (found, path)),) = fetch.fetch_authors({"eccv16", "larsson16"}, offline=True).items()
    assert (arch, found.name, path.read_bytes()) == ("eccv16", "eccv16-official", data)
    assert server.requests == ["/colorization_release_v2-9b330a0b.pth"]  # once
