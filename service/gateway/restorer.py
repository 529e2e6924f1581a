"""The `priorlab.v1.Restorer` servicer: validate a RestoreRequest, queue it on the job bus, stream it back.

Torch-free: the DIP runs in worker processes (`python -m service.restore`) behind the Redis job bus
(`service.bus.jobs`). Restore and RestoreStream own their job: when the caller's deadline passes or it
cancels the RPC, the job is cancelled too. SubmitRestore's job lives on its own; WatchRestore only
watches. Errors are `service.errors` exceptions, mapped to status codes by the server's interceptor.

A request's `idempotency_key` makes a retried call (same key, same client) return or attach to the first
call's job instead of queueing a second one. A job whose record vanished from the bus is reported lost
(DATA_LOSS), never as expired: `service.bus.jobs.missing` tells them apart by the time in the job id;
with auth on, only to its owner (`check_owner`: the id's owner tag), anyone else reads NOT_FOUND.
Validation decodes the image (up to 4 M pixels, some 100 ms), so it runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.bus import wire
from service.bus.jobs import (
    JobBus,
    check_idempotency_key,
    failure_error,
    is_terminal,
    new_job_id,
    tagged_for,
    unknown_job,
)
from service.errors import (
    Aborted,
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    PriorlabError,
    Unavailable,
    echo,
)
from service.gateway.auth import PROCESS_LABEL_KEY, authenticated_client, label_key, worker_label
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
    """Validate `request` (`InvalidArgument` names the field) and wrap it as a job for the bus.

    Checks everything the worker will: `wire.decode_inputs` is the worker's own decoding of the request.
    """
    check_idempotency_key(request.idempotency_key)
    wire.decode_inputs(request, max_pixels=settings.restore_max_pixels, max_bytes=settings.max_message_bytes)
    wire.check_stopping(request, settings.restore_max_iterations)
    return restore_pb2.RestoreJob(
        job_id=new_job_id(now, client),
        request=request,
        client_id=client,
        submitted_unix=now,
        deadline_unix=0.0 if time_remaining_s is None else now + time_remaining_s,
        max_iterations=settings.restore_max_iterations,
        max_attempts=settings.restore_max_attempts,
    )


def public_event(event: restore_pb2.JobEvent, key: bytes = PROCESS_LABEL_KEY) -> restore_pb2.RestoreEvent:
    """A bus event as the client sees it; a failure is raised as the exception it was on the worker.

    The worker's name (HOST-PID by default) becomes an opaque label (`auth.worker_label`, keyed by `key`);
    the gateway logs the name beside the label when the job starts.
    """
    if event.HasField("failure"):
        raise failure_error(event.failure)
    public = event.event
    for part in (public.started, public.result):
        if part.worker:
            label = worker_label(part.worker, key)
            if part is public.started:
                log.info("job %s: worker %s is shown to clients as %s", public.job_id, part.worker, label)
            part.worker = label
    return public


async def check_owner(bus: JobBus, job_id: str) -> None:
    """With auth on, only the job's owner may watch, cancel or read it: anyone else gets NOT_FOUND.

    A record on the bus names its client. One that vanished cannot, so the owner tag of the id stands in:
    the caller it is tagged for goes on, and reads DATA_LOSS (lost) or NOT_FOUND (expired) from the bus
    (`jobs.missing`); anyone else gets the plain NOT_FOUND of an unknown id (`jobs.unknown_job`), whether
    the job is there or vanished, so holding or making up an id tells nothing about another's jobs.
    With auth off the job id alone is the capability to watch and cancel (trusted networks only).
    The HTTP API calls this too, so both answer alike.
    """
    client = authenticated_client()
    if client is None:
        return
    try:
        owner: Any = await bus.redis.hget(f"{bus.prefix}job:{job_id}", "client")
    except (RedisConnectionError, RedisTimeoutError, OSError) as e:
        raise Unavailable(f"the Restore job bus (Redis) is unreachable: {e}") from None
    if owner is None and tagged_for(job_id, client):
        return  # vanished or expired, and the id is the caller's: the bus's read says which
    if owner is None or owner.decode(errors="replace") != client:
        raise unknown_job(job_id)


class RestorerServicer(restore_pb2_grpc.RestorerServicer):
    def __init__(self, bus: JobBus, settings: Settings) -> None:
        self._bus, self._settings = bus, settings
        self._label_key = label_key(settings.worker_label_key)

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
        job_id = _job_id(request.job_id)
        await self._check_owner(job_id)
        async for event in self._bus.events(job_id, ttl_s=self._ttl_s):
            yield public_event(event, self._label_key)

    async def CancelRestore(  # noqa: N802
        self, request: restore_pb2.CancelRestoreRequest, context: grpc.aio.ServicerContext
    ) -> restore_pb2.CancelRestoreResponse:
        job_id = _job_id(request.job_id)
        await self._check_owner(job_id)
        cancelled = await self._bus.cancel(
            job_id, Cancelled(f"job {job_id} was cancelled by CancelRestore"), ttl_s=self._ttl_s
        )
        return restore_pb2.CancelRestoreResponse(cancelled=cancelled)

    async def _check_owner(self, job_id: str) -> None:
        await check_owner(self._bus, job_id)

    @property
    def _ttl_s(self) -> float:
        return float(self._settings.restore_result_ttl_s)

    async def _submit(
        self, request: restore_pb2.RestoreRequest, context: grpc.aio.ServicerContext, *, deadline: bool
    ) -> tuple[restore_pb2.RestoreJob, restore_pb2.Queued | None]:
        """Validate (in a thread) and queue; with a known idempotency key, the first job instead.

        The job returned then carries the first job's id (and this call's deadline, for the cancel reason).
        """
        # With auth on, the token's client; never the self-asserted header (README "Security").
        client = authenticated_client() or client_id(context.invocation_metadata(), context.peer())
        remaining = context.time_remaining() if deadline else None
        job = await asyncio.to_thread(
            build_job, request, self._settings, client=client, now=time.time(), time_remaining_s=remaining
        )
        job_id, queued = await self._bus.submit_once(
            job,
            max_queue=self._settings.restore_max_queue,
            max_per_client=self._settings.restore_max_jobs_per_client,
            ttl_s=self._settings.restore_result_ttl_s,
            idempotency_key=request.idempotency_key,
        )
        if queued is None:
            log.info("job %s: submitted again by %s (same idempotency key)", job_id, client)
            job.job_id = job_id
            return job, None
        log.info("job %s queued for %s at position %d", job.job_id, client, queued.position)
        return job, queued

    async def _owned(self, job: restore_pb2.RestoreJob) -> AsyncGenerator[restore_pb2.RestoreEvent, None]:
        """The job's public events; if the caller goes away first (deadline, cancel), cancel the job."""
        ended = False
        try:
            async for event in self._bus.events(job.job_id, ttl_s=self._ttl_s):
                ended = is_terminal(event)
                yield public_event(event, self._label_key)
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
        raise InvalidArgument(f"job_id must be the id SubmitRestore returned, got {echo(job_id)}")
    return job_id
