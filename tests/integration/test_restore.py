"""Restore end to end: a real redis-server, two real worker processes (w1, w2) and the real gateway.

Images are 32x32 and runs a few iterations; long jobs are jpeg runs (the cheapest iteration) that are
cancelled. A job a test stops its worker in has hundreds of iterations (a few ms each on an idle
host), so it is still running when the signal lands. The tests that stop a worker run last (SIGTERM
restarts it; SIGKILL leaves one worker).
"""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from service.gateway.auth import worker_label
from service.pb.priorlab.v1 import restore_pb2, restore_pb2_grpc
from tests.integration.conftest import (
    RESTORER_SERVICE,
    WORKER_LABEL_KEY,
    RestoreStack,
    spawn_worker,
    wait_joined,
)

pytestmark = pytest.mark.slow

LONG = 20_000  # iterations of a job that only ends by being cancelled
# Clients see opaque worker labels (README "Security"); the gateway's key is known here, so are the labels.
WORKER = {worker_label(name, WORKER_LABEL_KEY.encode()): name for name in ("w1", "w2")}


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def image(channels: int = 3, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (size, size) if channels == 1 else (size, size, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def jpeg_request(iterations: int, **kwargs: Any) -> restore_pb2.RestoreRequest:
    return restore_pb2.RestoreRequest(
        image=png(image()), jpeg=restore_pb2.JpegParams(), fixed_iterations=iterations, **kwargs
    )


@pytest.fixture
def stub(restore_stack: RestoreStack) -> Iterator[restore_pb2_grpc.RestorerStub]:
    options = [("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(restore_stack.target, options=options) as channel:
        yield restore_pb2_grpc.RestorerStub(channel)


def kinds(events: list[restore_pb2.RestoreEvent]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in events]


def watch_to_end(
    stub: restore_pb2_grpc.RestorerStub, job_id: str
) -> tuple[list[restore_pb2.RestoreEvent], grpc.RpcError | None]:
    events: list[restore_pb2.RestoreEvent] = []
    try:
        for event in stub.WatchRestore(restore_pb2.WatchRestoreRequest(job_id=job_id), timeout=120):
            events.append(event)
    except grpc.RpcError as e:
        return events, e
    return events, None


def cancel_all(stub: restore_pb2_grpc.RestorerStub, job_ids: list[str]) -> None:
    """Cancel and wait until each job has ended, so the next test finds idle workers."""
    for job_id in job_ids:
        stub.CancelRestore(restore_pb2.CancelRestoreRequest(job_id=job_id), timeout=10)
    for job_id in job_ids:
        _, error = watch_to_end(stub, job_id)
        assert error is not None and error.code() == grpc.StatusCode.CANCELLED


def test_restorer_is_serving_with_workers(restore_stack: RestoreStack) -> None:
    with grpc.insecure_channel(restore_stack.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = health.Check(health_pb2.HealthCheckRequest(service=RESTORER_SERVICE), timeout=2).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.2)
    pytest.fail("Restorer never became SERVING with two workers on the bus")


def _task_request(task: str) -> tuple[restore_pb2.RestoreRequest, np.ndarray, tuple[int, int]]:
    if task == "denoise":
        rgba = image(4)
        params: dict[str, Any] = {"denoise": restore_pb2.DenoiseParams(sigma=25)}
        return restore_pb2.RestoreRequest(image=png(rgba), **params), rgba, (32, 32)
    if task == "inpaint":
        rgb = image(3)
        mask = np.full((32, 32), 255, np.uint8)
        mask[::5] = 0  # every 5th row missing
        params = {"inpaint": restore_pb2.InpaintParams(mask=png(mask))}
        return restore_pb2.RestoreRequest(image=png(rgb), **params), rgb, (32, 32)
    if task == "super_resolve":
        rgba = image(4)
        params = {"super_resolve": restore_pb2.SuperResolveParams(factor=2)}
        return restore_pb2.RestoreRequest(image=png(rgba), **params), rgba, (64, 64)
    gray = image(1)
    return restore_pb2.RestoreRequest(image=png(gray), jpeg=restore_pb2.JpegParams()), gray, (32, 32)


@pytest.mark.parametrize("task", ["denoise", "inpaint", "super_resolve", "jpeg"])
def test_each_task_end_to_end(stub: restore_pb2_grpc.RestorerStub, task: str) -> None:
    request, source, size = _task_request(task)
    request.fixed_iterations = 2
    result = stub.Restore(request, timeout=120)
    out = np.asarray(Image.open(io.BytesIO(result.image)))
    assert out.shape[:2] == size and (result.height, result.width) == size
    assert out.ndim == source.ndim and (out.ndim == 2 or out.shape[2] == source.shape[2])  # alpha kept
    if source.ndim == 3 and source.shape[2] == 4:
        alpha = np.asarray(Image.fromarray(source[..., 3]).resize(size[::-1], Image.Resampling.BICUBIC))
        diff = np.abs(out[..., 3].astype(int) - alpha)  # carried through (exactly), resized for SR
        assert diff.max() == 0 if size == (32, 32) else diff.mean() < 1
    assert result.iterations_run == 2 and result.chosen_iteration == 2
    assert result.stop_reason == restore_pb2.STOP_REASON_FIXED_ITERATIONS
    assert WORKER.get(result.worker) in ("w1", "w2") and result.attempt == 1 and result.device == "cpu"
    assert result.timings.restore_ms > 0 and result.timings.total_ms >= result.timings.restore_ms


def test_stream_order_queued_started_progress_result(stub: restore_pb2_grpc.RestorerStub) -> None:
    request = jpeg_request(9, progress_every=3, preview=True)
    events = list(stub.RestoreStream(request, timeout=120))
    assert kinds(events) == ["queued", "started", "progress", "progress", "progress", "result"]
    assert events[0].queued.position >= 1 and len({e.job_id for e in events}) == 1
    progress = [e.progress for e in events[2:5]]
    assert [p.iteration for p in progress] == [3, 6, 9] and all(p.max_iterations == 9 for p in progress)
    assert all(p.loss > 0 and p.eta_s >= 0 for p in progress)
    preview = Image.open(io.BytesIO(progress[0].preview))
    assert preview.format == "PNG" and max(preview.size) <= 128
    assert events[-1].result.iterations_run == 9


def test_watch_replays_a_finished_job(stub: restore_pb2_grpc.RestorerStub) -> None:
    job_id = stub.SubmitRestore(jpeg_request(4, progress_every=2), timeout=10).job_id
    live, error = watch_to_end(stub, job_id)
    assert error is None and kinds(live) == ["queued", "started", "progress", "progress", "result"]
    replay, error = watch_to_end(stub, job_id)
    assert error is None and replay == live  # the whole stream again, result included


def test_watch_unknown_job_is_not_found(stub: restore_pb2_grpc.RestorerStub) -> None:
    _, error = watch_to_end(stub, "0" * 32)
    assert error is not None and error.code() == grpc.StatusCode.NOT_FOUND


def test_cancel_stops_a_running_job(stub: restore_pb2_grpc.RestorerStub) -> None:
    job_id = stub.SubmitRestore(jpeg_request(LONG, progress_every=1), timeout=10).job_id
    events = stub.WatchRestore(restore_pb2.WatchRestoreRequest(job_id=job_id), timeout=120)
    for event in events:
        if event.WhichOneof("event") == "progress":
            break
    cancelled_at = time.monotonic()
    assert stub.CancelRestore(restore_pb2.CancelRestoreRequest(job_id=job_id), timeout=10).cancelled
    with pytest.raises(grpc.RpcError) as info:
        for _ in events:
            pass
    assert info.value.code() == grpc.StatusCode.CANCELLED and "cancelled" in (info.value.details() or "")
    assert time.monotonic() - cancelled_at < 5  # pub/sub -> flag -> the engine's next iteration check
    assert not stub.CancelRestore(restore_pb2.CancelRestoreRequest(job_id=job_id), timeout=10).cancelled


def test_stream_cancelled_by_the_client_cancels_the_job(stub: restore_pb2_grpc.RestorerStub) -> None:
    call = stub.RestoreStream(jpeg_request(LONG, progress_every=1), timeout=120)
    job_id = dict(call.initial_metadata())["x-job-id"]
    for event in call:
        if event.WhichOneof("event") == "progress":
            break
    call.cancel()
    _, error = watch_to_end(stub, job_id)
    assert error is not None and error.code() == grpc.StatusCode.CANCELLED


def test_deadline_exceeded_cancels_the_job(stub: restore_pb2_grpc.RestorerStub) -> None:
    future = stub.Restore.future(jpeg_request(LONG), timeout=4)
    job_id = dict(future.initial_metadata())["x-job-id"]
    with pytest.raises(grpc.RpcError) as info:
        future.result()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _, error = watch_to_end(stub, job_id)  # the job itself ended, with the same status
    assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_bounded_queue_is_resource_exhausted_with_its_length(stub: restore_pb2_grpc.RestorerStub) -> None:
    submitted: list[str] = []
    try:
        with pytest.raises(grpc.RpcError) as info:
            for n in range(8):  # 2 running + 4 queued fit; the limit is hit by the 7th at the latest
                metadata = (("x-client-id", f"client-{n}"),)
                submitted.append(stub.SubmitRestore(jpeg_request(LONG), timeout=10, metadata=metadata).job_id)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full: 4 jobs waiting (limit 4)" in (info.value.details() or "")
        assert 4 <= len(submitted) <= 6
    finally:
        cancel_all(stub, submitted)


def test_per_client_quota(stub: restore_pb2_grpc.RestorerStub) -> None:
    metadata = (("x-client-id", "greedy"),)
    submitted: list[str] = []
    try:
        for _ in range(3):
            submitted.append(stub.SubmitRestore(jpeg_request(LONG), timeout=10, metadata=metadata).job_id)
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitRestore(jpeg_request(LONG), timeout=10, metadata=metadata)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "client 'greedy' has 3 unfinished Restore jobs (limit 3)" in (info.value.details() or "")
        other = stub.SubmitRestore(jpeg_request(LONG), timeout=10, metadata=(("x-client-id", "other"),))
        submitted.append(other.job_id)
    finally:
        cancel_all(stub, submitted)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"image": b"not an image"}, "image"),
        ({"super_resolve": restore_pb2.SuperResolveParams(factor=3)}, "super_resolve.factor"),
        ({"denoise": restore_pb2.DenoiseParams(sigma=-1)}, "denoise.sigma"),
        ({"inpaint": restore_pb2.InpaintParams(mask=png(np.zeros((8, 8), np.uint8)))}, "inpaint.mask"),
        ({"fixed_iterations": LONG + 1}, "fixed_iterations"),
    ],
)
def test_bad_requests_are_invalid_argument(
    stub: restore_pb2_grpc.RestorerStub, change: dict[str, Any], needle: str
) -> None:
    request = jpeg_request(5)
    request.MergeFrom(restore_pb2.RestoreRequest(**change))
    if "image" in change:
        request.image = change["image"]
    for call in (stub.Restore, stub.SubmitRestore):
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in (
            info.value.details() or ""
        )
    with pytest.raises(grpc.RpcError) as info:
        list(stub.RestoreStream(request, timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_two_workers_share_the_load(stub: restore_pb2_grpc.RestorerStub) -> None:
    jobs = [stub.SubmitRestore(jpeg_request(30, seed=n), timeout=10).job_id for n in range(2)]
    results = []
    for job_id in jobs:
        events, error = watch_to_end(stub, job_id)
        assert error is None
        results.append(events[-1].result)
    assert {WORKER[r.worker] for r in results} == {"w1", "w2"}  # each idle worker took one, at the same time
    first, second = sorted(results, key=lambda r: r.timings.queued_ms)
    assert second.timings.queued_ms < first.timings.total_ms  # the second started before the first ended


def test_sigterm_releases_the_running_job_to_the_other_worker(
    stub: restore_pb2_grpc.RestorerStub, restore_stack: RestoreStack, tmp_path: Path
) -> None:
    """Graceful shutdown: the job goes back to the queue at once (no visibility wait), attempt not counted."""
    job_id = stub.SubmitRestore(jpeg_request(400, progress_every=50), timeout=10).job_id
    events = []
    victim = None
    for event in stub.WatchRestore(restore_pb2.WatchRestoreRequest(job_id=job_id), timeout=120):
        events.append(event)
        kind = event.WhichOneof("event")
        if kind == "started" and victim is None:
            victim = WORKER[event.started.worker]
        if kind == "progress" and victim is not None and restore_stack.workers[victim].process.poll() is None:
            restore_stack.workers[victim].stop()  # SIGTERM, then wait
    assert victim is not None and restore_stack.workers[victim].process.returncode == 0
    assert kinds(events)[-1] == "result"
    starts = [e.started for e in events if e.WhichOneof("event") == "started"]
    assert [s.attempt for s in starts] == [1, 1]
    assert WORKER[starts[0].worker] == victim != WORKER[starts[1].worker]
    assert "queued" in kinds(events)[2:]  # the release put it back in the queue, visibly
    # Bring the worker back for the next test.
    restore_stack.workers[victim] = wait_joined(
        restore_stack.redis_url, spawn_worker(restore_stack.redis_url, tmp_path, victim)
    )


def test_worker_killed_mid_job_is_retried_by_the_other(
    stub: restore_pb2_grpc.RestorerStub, restore_stack: RestoreStack
) -> None:
    """Runs last: SIGKILL the job's worker; after the 2 s visibility timeout the other one retries it."""
    job_id = stub.SubmitRestore(jpeg_request(600, progress_every=50), timeout=10).job_id
    events = []
    victim = None
    for event in stub.WatchRestore(restore_pb2.WatchRestoreRequest(job_id=job_id), timeout=120):
        events.append(event)
        kind = event.WhichOneof("event")
        if kind == "started" and victim is None:
            victim = WORKER[event.started.worker]
        if kind == "progress" and victim is not None and restore_stack.workers[victim].process.poll() is None:
            os.kill(restore_stack.workers[victim].process.pid, signal.SIGKILL)
            restore_stack.workers[victim].process.wait()
    starts = [e.started for e in events if e.WhichOneof("event") == "started"]
    assert [s.attempt for s in starts] == [1, 2]
    assert WORKER[starts[0].worker] == victim != WORKER[starts[1].worker]
    result = events[-1].result
    assert result.worker == starts[1].worker and result.attempt == 2 and result.iterations_run == 600
