from __future__ import annotations

from pathlib import Path

import pytest

from service.launch.process import free_port
from service.launch.triton import TritonServer
from tests.conftest import MODEL_REPOSITORY

pytestmark = pytest.mark.triton


def test_a_second_server_gets_its_own_ports_and_shm_prefix_and_stops_by_pid(
    triton_server: TritonServer, tmp_path: Path
) -> None:
    second = TritonServer.start(MODEL_REPOSITORY, tmp_path, nice=3)
    try:
        assert second.is_ready() and triton_server.is_ready()
        # niced at exec: the server and the stubs it forked run below the gateway's priority
        assert _nice(second.pid) == 3
        assert all(_nice(pid) == 3 for pid in _group(second.pid)) and len(_group(second.pid)) > 1
        assert {second.grpc_port, second.http_port} & {
            triton_server.grpc_port,
            triton_server.http_port,
        } == set()
        assert second.shm_prefix != triton_server.shm_prefix
        assert list(Path("/dev/shm").glob(f"{second.shm_prefix}*")), (
            "the Python backend stub uses its own prefix"
        )
    finally:
        second.stop()
    assert second.handle.process.poll() is not None
    assert not list(Path("/dev/shm").glob(f"{second.shm_prefix}*"))
    assert triton_server.is_ready()


def _nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[16])


def _group(pgid: int) -> list[int]:
    """Live processes of the group (the server's session: itself and its backend stubs)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[2]) == pgid:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return pids


def test_a_broken_repository_fails_fast_with_the_log(tmp_path: Path) -> None:
    broken = tmp_path / "repo" / "eccv16"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text('name: "eccv16"\nbackend: "no_such_backend"\nmax_batch_size: 1\n')
    with pytest.raises(RuntimeError, match=r"tritonserver \(pid \d+\) exited with status"):
        TritonServer.start(tmp_path / "repo", tmp_path / "work", config_name="missing", ready_timeout_s=60)


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
