"""The `priorlab.v1.Restorer` servicer: validate a RestoreRequest, queue it on the job bus, stream it back.

Torch-free: the DIP runs in worker processes (`python -m service.worker`) behind the Redis job bus
(`service.bus.jobs`). Restore and RestoreStream own their job: when the caller's deadline passes or it
cancels the RPC, the job is cancelled too. SubmitRestore's job lives on its own; WatchRestore only
watches. Errors are `service.errors` exceptions, mapped to status codes by the server's interceptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

import grpc

from service.bus import wire
from service.bus.jobs import JobBus, failure_error, is_terminal
from service.errors import Aborted, Cancelled, DeadlineExceeded, InvalidArgument, PriorlabError
from service.gateway.settings import Settings
from service.pb.priorlab.v1 import restore_pb2, restore_pb2_grpc

log = logging.getLogger(__name__)

RESTORER_SERVICE = restore_pb2.DESCRIPTOR.services_by_name["Restorer"].full_name
CLIENT_ID_KEY = "x-client-id"
_DEADLINE_SLACK_S = 0.25
JOB_ID_KEY = "x-job-id"


def client_id(metadata: tuple[tuple[str, str | bytes], ...] | None, peer: str) -> str:
    """`x-client-id` metadata, else the peer's address without its port ("ipv4:10.0.0.7")."""
    for key, value in metadata or ():
        if key == CLIENT_ID_KEY and value:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


def build_job(
    request: restore_pb2.RestoreRequest,
    settings: Settings,
    *,
    client: str,
    now: float,
    time_remaining_s: float | None,
) -> restore_pb2.RestoreJob:
    """Validate `request` (`InvalidArgument` names the field) and wrap it as a job for the bus."""
    wire.decode_inputs(request, max_pixels=settings.restore_max_pixels, max_bytes=settings.max_message_bytes)
    wire.check_stopping(request, settings.restore_max_iterations)
    return restore_pb2.RestoreJob(
        job_id=uuid.uuid4().hex,
        request=request,
        client_id=client,
        submitted_unix=now,
        deadline_unix=0.0 if time_remaining_s is None else now + time_remaining_s,
        max_iterations=settings.restore_max_iterations,
        max_attempts=settings.restore_max_attempts,
    )


def public_event(event: restore_pb2.JobEvent) -> restore_pb2.RestoreEvent:
    """A bus event as the client sees it; a failure is raised as the exception it was on the worker."""
    if event.HasField("failure"):
        raise failure_error(event.failure)
    return event.event


class RestorerServicer(restore_pb2_grpc.RestorerServicer):
    def __init__(self, bus: JobBus, settings: Settings) -> None:
        self._bus, self._settings = bus, settings

    async def Restore(  # noqa: N802  (gRPC method names)
        self, request: restore_pb2.RestoreRequest, context: grpc.aio.ServicerContext
    ) -> restore_pb2.RestoreResult:
        job, _ = await self._submit(request, context, deadline=True)
        await context.send_initial_metadata(((JOB_ID_KEY, job.job_id),))
        async with contextlib.aclosing(self._owned(job)) as events:
            async for event in events:
                if event.HasField("result"):
                    return event.result
        raise Aborted(f"job {job.job_id}'s event stream ended without a result")  # is_terminal stops on one

    async def RestoreStream(  # noqa: N802
        self, request: restore_pb2.RestoreRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[restore_pb2.RestoreEvent]:
        job, _ = await self._submit(request, context, deadline=True)
        await context.send_initial_metadata(((JOB_ID_KEY, job.job_id),))
        async for event in self._owned(job):
            yield event

    async def SubmitRestore(  # noqa: N802
        self, request: restore_pb2.RestoreRequest, context: grpc.aio.ServicerContext
    ) -> restore_pb2.SubmitRestoreResponse:
        job, queued = await self._submit(request, context, deadline=False)
        return restore_pb2.SubmitRestoreResponse(job_id=job.job_id, queued=queued)

    async def WatchRestore(  # noqa: N802
        self, request: restore_pb2.WatchRestoreRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[restore_pb2.RestoreEvent]:
        async for event in self._bus.events(_job_id(request.job_id)):
            yield public_event(event)

    async def CancelRestore(  # noqa: N802
        self, request: restore_pb2.CancelRestoreRequest, context: grpc.aio.ServicerContext
    ) -> restore_pb2.CancelRestoreResponse:
        job_id = _job_id(request.job_id)
        cancelled = await self._bus.cancel(job_id, Cancelled(f"job {job_id} was cancelled by CancelRestore"))
        return restore_pb2.CancelRestoreResponse(cancelled=cancelled)

    async def _submit(
        self, request: restore_pb2.RestoreRequest, context: grpc.aio.ServicerContext, *, deadline: bool
    ) -> tuple[restore_pb2.RestoreJob, restore_pb2.Queued]:
        client = client_id(context.invocation_metadata(), context.peer())
        remaining = context.time_remaining() if deadline else None
        job = build_job(request, self._settings, client=client, now=time.time(), time_remaining_s=remaining)
        queued = await self._bus.submit(
            job,
            max_queue=self._settings.restore_max_queue,
            max_per_client=self._settings.restore_max_jobs_per_client,
            ttl_s=self._settings.restore_result_ttl_s,
        )
        log.info("job %s queued for %s at position %d", job.job_id, client, queued.position)
        return job, queued

    async def _owned(self, job: restore_pb2.RestoreJob) -> AsyncGenerator[restore_pb2.RestoreEvent, None]:
        """The job's public events; if the caller goes away first (deadline, cancel), cancel the job."""
        ended = False
        try:
            async for event in self._bus.events(job.job_id):
                ended = is_terminal(event)
                yield public_event(event)
        finally:
            if not ended:
                await asyncio.shield(self._cancel_abandoned(job))

    async def _cancel_abandoned(self, job: restore_pb2.RestoreJob) -> None:
        # gRPC's deadline timer and our wall-clock copy of it differ by milliseconds: allow for that.
        late = job.deadline_unix > 0 and time.time() >= job.deadline_unix - _DEADLINE_SLACK_S
        if late:
            ended: PriorlabError = DeadlineExceeded(f"job {job.job_id} passed its deadline")
        else:
            ended = Cancelled(f"job {job.job_id} was cancelled: its caller went away")
        try:
            await self._bus.cancel(job.job_id, ended)
        except PriorlabError as e:  # the caller is gone; the worker's own deadline check still stops it
            log.warning("job %s: cancel after the caller left failed: %s", job.job_id, e)


def _job_id(job_id: str) -> str:
    if not job_id or len(job_id) > 64 or not job_id.isalnum():
        raise InvalidArgument(f"job_id must be the id SubmitRestore returned, got {job_id!r}")
    return job_id
