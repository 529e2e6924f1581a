"""A Restore worker process: claims DIP jobs from the Redis job bus and runs one per slot.

    python -m service.restore --redis redis://HOST:PORT/0 [--slots N] [--metrics-port P]

Any number of workers on any number of machines point at the same Redis; each takes a job only when one of
its slots is free, so the load balances itself. Slots default to one per GPU (slot i runs on cuda:i), else
one on the CPU. The bus and its retry policy are described in `service.bus.jobs`.

Cancel path: the gateway sets `restore:job:<id>:cancel` and publishes on `restore:cancel`; a listener task
here sets the running job's `threading.Event`, which the engine polls before every iteration (no Redis
round trip per iteration), so at most one more iteration runs. The heartbeat loop re-reads the cancel key
as a backstop for a lost pub/sub message, and stops a job this worker no longer owns.

Shutdown (SIGTERM or SIGINT): stop claiming, stop the running jobs within one iteration and release them
to the queue (the attempt does not count), so another worker restarts them at once; then exit. Chosen
over "finish first" because a DIP job can run for hours on a CPU, far past any deploy's grace period.

Redis restarts: every Redis call is retried with backoff (0.1 s doubling to 5 s) rather than given up on.
A claim that finds its consumer groups gone (NOGROUP: Redis restarted without persistence) creates them
again (`JobBus.claim`); a job's result is published once Redis is back if that is within the visibility
timeout (else another worker runs the job again). The worker only beats while it can claim (or all its
slots are busy), so the gateway's health does not count a worker that cannot take jobs.

Health and metrics: with `--metrics-port`, `GET /metrics` (Prometheus) and `GET /healthz` (200 while Redis
answered within the last few heartbeats, else 503) on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.server
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import prometheus_client
import torch
from redis.exceptions import RedisError

from service.bus import wire
from service.bus.jobs import Claim, JobBus, failure_event, redacted_url
from service.bus.result import Progress, RestoreResult, StopReason
from service.bus.timing import DEFAULT_VISIBILITY_TIMEOUT_S, BusTiming
from service.errors import Aborted, DeadlineExceeded, Internal, InvalidArgument, PriorlabError, error_for
from service.metrics import WorkerMetrics
from service.pb.priorlab.v1 import restore_pb2
from service.restore.engine import restore
from service.restore.recipes import recipe_for

log = logging.getLogger("priorlab.worker")

_NO_LIMIT = 1 << 62  # the gateway already enforced the pixel and byte limits
_BACKOFF_S = (0.1, 5.0)  # first and longest wait between retries of a failing Redis call (doubling)


@dataclass
class Backoff:
    """Waits that double from `first_s` to `max_s` while a call keeps failing; `reset` after a success."""

    first_s: float = _BACKOFF_S[0]
    max_s: float = _BACKOFF_S[1]
    next_s: float = field(init=False, default=0.0)
    failures: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.next_s = self.first_s

    def failed(self) -> float:
        """The wait before the next try."""
        self.failures += 1
        wait, self.next_s = self.next_s, min(2 * self.next_s, self.max_s)
        return wait

    def reset(self) -> None:
        self.next_s, self.failures = self.first_s, 0


@dataclass
class Running:
    """A job on a slot. `stop` is what the engine polls; `reason` says why it was set."""

    claim: Claim
    job: restore_pb2.RestoreJob
    stop: threading.Event = field(default_factory=threading.Event)
    reason: str = ""  # "cancel", "lost" (another worker owns it now) or "shutdown"
    code: str = ""  # the status code name a cancel asked for

    def halt(self, reason: str, code: str = "") -> None:
        if not self.stop.is_set():
            self.reason, self.code = reason, code
            self.stop.set()

    def should_cancel(self) -> bool:
        deadline = self.job.deadline_unix
        return self.stop.is_set() or (deadline > 0 and time.time() > deadline)


@dataclass(frozen=True, eq=False)
class Outcome:
    """What a slot's thread hands back: the engine's result and, unless cancelled, the response."""

    result: RestoreResult
    response: restore_pb2.RestoreResult | None


def execute(
    job: restore_pb2.RestoreJob, device: str, running: Running, on_progress: Callable[[Progress], None]
) -> Outcome:
    """Decode, restore, encode (runs in a slot's thread)."""
    request = job.request
    t0 = time.monotonic()
    inputs = wire.decode_inputs(request, max_pixels=_NO_LIMIT, max_bytes=_NO_LIMIT)
    channels = 1 if inputs.pixels.ndim == 2 else 3
    budget = min(recipe_for(inputs.task, channels).iterations, job.max_iterations)
    t1 = time.monotonic()
    result = restore(
        inputs.pixels,
        inputs.task,
        stopping=wire.stopping(request, budget),
        seed=request.seed,
        on_progress=on_progress,
        progress_every=wire.progress_every(request),
        preview=request.preview,
        should_cancel=running.should_cancel,
        device=device,
    )
    if result.stop_reason == StopReason.CANCELLED:
        return Outcome(result, None)
    t2 = time.monotonic()
    samples = wire.to_samples(result.image, inputs.pixels.dtype)
    size = (samples.shape[0], samples.shape[1])
    alpha = None if inputs.alpha is None else wire.resize_alpha(inputs.alpha, size)
    image = wire.encode_png(samples, alpha)
    t3 = time.monotonic()
    response = restore_pb2.RestoreResult(
        job_id=job.job_id,
        image=image,
        width=samples.shape[1],
        height=samples.shape[0],
        iterations_run=result.iterations_run,
        chosen_iteration=result.iteration,
        stop_reason=wire.STOP_REASONS[result.stop_reason],
        device=result.device,
        timings=restore_pb2.RestoreTimings(
            decode_ms=(t1 - t0) * 1e3, restore_ms=(t2 - t1) * 1e3, encode_ms=(t3 - t2) * 1e3
        ),
    )
    return Outcome(result, response)


class Worker:
    def __init__(
        self,
        bus: JobBus,
        *,
        name: str,
        devices: list[str],
        timing: BusTiming,
        metrics: WorkerMetrics,
    ) -> None:
        self.bus, self.name, self.devices, self.metrics = bus, name, devices, metrics
        self.timing = timing
        self.last_contact = 0.0  # monotonic time Redis last answered (health)
        self.last_claim = 0.0  # monotonic time a claim last went through (the beat is sent only then)
        self._running: dict[str, Running] = {}
        self._free = list(range(len(devices)))
        self._slot_freed = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix="slot")
        metrics.slots.set(len(devices))

    @property
    def healthy(self) -> bool:
        # The gateway's rule for this worker's beats, applied to its own contact with Redis.
        return time.monotonic() - self.last_contact < self.timing.worker_ttl_s

    @property
    def can_claim(self) -> bool:
        """Whether this worker takes jobs: its last claim went through lately, or no slot is free."""
        return not self._free or time.monotonic() - self.last_claim < self.timing.worker_ttl_s

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff()
        while not stop.is_set():  # Redis may be down at the start too: wait for it
            try:
                await self.bus.ensure_groups()
                break
            except (RedisError, OSError) as e:
                wait_s = backoff.failed()
                log.warning("could not create the consumer groups (%s); retrying in %.1f s", e, wait_s)
                await _first(stop, timeout_s=wait_s)
        backoff.reset()
        self.last_claim = time.monotonic()  # about to claim: the first beat may go out
        helpers = [asyncio.create_task(self._heartbeats()), asyncio.create_task(self._cancels())]
        slots: set[asyncio.Task[None]] = set()
        log.info("worker %s: %d slot(s) on %s", self.name, len(self.devices), ", ".join(self.devices))
        while not stop.is_set():
            if not self._free:
                self._slot_freed.clear()
                await _first(self._slot_freed, stop)
                continue
            try:
                claims = await self.bus.claim(
                    self.name, visibility_s=self.timing.visibility_timeout_s, block_s=1.0
                )
            except (RedisError, OSError) as e:
                wait_s = backoff.failed()
                log.warning("claim failed (%s); retrying in %.1f s", e, wait_s)
                await _first(stop, timeout_s=wait_s)
                continue
            if backoff.failures:
                log.info("claiming again after %d failed tries", backoff.failures)
            backoff.reset()
            self.last_contact = self.last_claim = time.monotonic()
            keep = claims[:1] if not stop.is_set() else []
            for extra in claims[len(keep) :]:
                await self.bus.release_unstarted(self.name, extra)
            for claim in keep:
                task = asyncio.create_task(self._slot(claim, self._free.pop(0)))
                slots.add(task)
                task.add_done_callback(slots.discard)
        log.info("worker %s stopping: releasing %d running job(s)", self.name, len(self._running))
        for running in self._running.values():
            running.halt("shutdown")
        await asyncio.gather(*slots, return_exceptions=True)
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        self._executor.shutdown()
        try:
            await self.bus.leave(self.name)
        except (RedisError, OSError) as e:  # its heartbeat entry just ages out of the gateway's health
            log.warning("could not leave the bus: %s", e)

    async def _slot(self, claim: Claim, slot: int) -> None:
        self.metrics.busy_slots.inc()
        try:
            await self._job(claim, self.devices[slot])
        except (RedisError, OSError, PriorlabError) as e:
            # Not acknowledged: after the visibility timeout another worker retries the job.
            log.warning("job %s: the bus failed (%s); it will be retried", claim.job_id, e)
        finally:
            self.metrics.busy_slots.dec()
            self._free.append(slot)
            self._slot_freed.set()

    async def _job(self, claim: Claim, device: str) -> None:
        start = await self.bus.start(self.name, claim)
        if start.outcome == "skip":
            return
        if start.outcome == "cancelled":
            cancelled = error_for(start.code, f"job {claim.job_id} was cancelled before it started")
            await self.bus.finish(self.name, claim, failure_event(cancelled), "cancelled")
            return
        if start.outcome == "exhausted":
            failures = "; ".join(start.failures)
            message = (
                f"job {claim.job_id} failed: its worker stopped responding on each of {start.attempt} "
                f"attempts ({failures or 'no failure recorded'}); not retried again. Dead-letter record: "
                f"{self.bus.dead_letter_key(claim.job_id)}"
            )
            await self.bus.finish(self.name, claim, failure_event(Aborted(message)), "failed")
            self.metrics.jobs.labels("", "failed").inc()
            return
        if start.job is None:
            raise ValueError(f"start of {claim.job_id} returned no job")  # the script always sends it
        job, attempt = start.job, start.attempt
        task = job.request.WhichOneof("task") or ""
        running = Running(claim, job)
        started_unix = time.time()
        self._running[job.job_id] = running
        try:
            code = await self.bus.cancel_requested(job.job_id)  # sent before we were listening for it
            if code is not None:
                running.halt("cancel", code)
            started = restore_pb2.Started(worker=self.name, attempt=attempt, device=device)
            await self.bus.publish(self.name, job.job_id, _event(job.job_id, started=started))
            log.info("job %s (%s) attempt %d on %s", job.job_id, task, attempt, device)
            outcome, error = await self._execute(job, device, running)
        finally:
            del self._running[job.job_id]
        await self._end(claim, running, attempt, started_unix, task, outcome, error)

    async def _execute(
        self, job: restore_pb2.RestoreJob, device: str, running: Running
    ) -> tuple[Outcome | None, restore_pb2.JobEvent | None]:
        """Run the job in a slot thread while its progress is published in order from this loop."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[restore_pb2.Progress | None] = asyncio.Queue()

        def on_progress(progress: Progress) -> None:  # slot thread: encode the preview here, not in the loop
            loop.call_soon_threadsafe(queue.put_nowait, wire.progress_message(progress))

        publisher = asyncio.create_task(self._publish_progress(job.job_id, queue))
        try:
            call = functools.partial(execute, job, device, running, on_progress)
            return await loop.run_in_executor(self._executor, call), None
        except PriorlabError as e:  # reaches the client with the status of its kind, as in the gateway
            return None, failure_event(e)
        except ValueError as e:  # the engine refused the input
            return None, failure_event(InvalidArgument(f"job {job.job_id}: {e}"))
        except Exception:
            log.exception("job %s failed", job.job_id)
            return None, failure_event(
                Internal(f"job {job.job_id} failed in worker {self.name} (logged there)")
            )
        finally:
            queue.put_nowait(None)
            await publisher

    async def _publish_progress(self, job_id: str, queue: asyncio.Queue[restore_pb2.Progress | None]) -> None:
        while (progress := await queue.get()) is not None:
            try:
                await self.bus.publish(self.name, job_id, _event(job_id, progress=progress))
            except (RedisError, OSError) as e:
                log.warning("job %s: progress not published (%s)", job_id, e)

    async def _end(
        self,
        claim: Claim,
        running: Running,
        attempt: int,
        started_unix: float,
        task: str,
        outcome: Outcome | None,
        error: restore_pb2.JobEvent | None,
    ) -> None:
        job_id = claim.job_id
        if outcome is not None:
            self.metrics.iterations.labels(task).inc(outcome.result.iterations_run)
            self.metrics.job_seconds.labels(task).observe(outcome.result.elapsed_s)
            if outcome.result.elapsed_s > 0:
                rate = outcome.result.iterations_run / outcome.result.elapsed_s
                self.metrics.iterations_per_second.labels(task).set(rate)
        if outcome is not None and outcome.response is not None:
            response = outcome.response
            response.worker, response.attempt = self.name, attempt
            # Clocks of gateway and worker hosts: NTP-close is enough for these.
            response.timings.queued_ms = max(0.0, started_unix - running.job.submitted_unix) * 1e3
            response.timings.total_ms = max(0.0, time.time() - running.job.submitted_unix) * 1e3
            event = _event(job_id, result=response)
            state = "done"
        elif running.reason == "shutdown":
            released = await self.bus.release(self.name, claim)
            log.info("job %s released to the queue (%s)", job_id, "ok" if released else "not ours any more")
            self.metrics.jobs.labels(task, "released").inc()
            return
        elif running.reason == "lost":
            log.warning("job %s: another worker owns it now; dropped here", job_id)
            self.metrics.jobs.labels(task, "lost").inc()
            return
        elif error is not None:
            event, state = error, "failed"
        else:
            iterations = 0 if outcome is None else outcome.result.iterations_run
            if running.reason == "cancel":
                ended = error_for(running.code, f"job {job_id} was cancelled after {iterations} iterations")
            else:
                ended = DeadlineExceeded(f"job {job_id} passed its deadline after {iterations} iterations")
            event = failure_event(ended)
            state = "cancelled"
        if await self._finish(claim, event, state):
            self.metrics.jobs.labels(task, state).inc()
        else:
            log.warning("job %s: another worker owns it now; its %s was not published", job_id, state)

    async def _finish(self, claim: Claim, event: restore_pb2.JobEvent, state: str) -> bool:
        """`finish`, retried with backoff while Redis is unreachable, for up to the visibility timeout.

        Past it, another worker may have taken the job over (the fence then refuses this result); the
        last error is raised, and the job is retried as if this worker had died.
        """
        backoff = Backoff()
        give_up = time.monotonic() + self.timing.visibility_timeout_s
        while True:
            try:
                return await self.bus.finish(self.name, claim, event, state)
            except (RedisError, OSError) as e:
                wait_s = backoff.failed()
                if time.monotonic() + wait_s > give_up:
                    raise
                log.warning(
                    "job %s: publishing its end failed (%s); retrying in %.1f s", claim.job_id, e, wait_s
                )
                await asyncio.sleep(wait_s)

    async def _heartbeats(self) -> None:
        while True:
            try:
                if self.can_claim:
                    await self.bus.beat(self.name)
                for running in list(self._running.values()):
                    if not await self.bus.heartbeat(self.name, running.claim):
                        running.halt("lost")
                    elif (code := await self.bus.cancel_requested(running.claim.job_id)) is not None:
                        running.halt("cancel", code)
                self.metrics.queue_depth.set(await self.bus.queue_length())
                self.last_contact = time.monotonic()
            except (RedisError, OSError, PriorlabError) as e:
                log.warning("heartbeat failed: %s", e)
            await asyncio.sleep(self.timing.heartbeat_s)

    async def _cancels(self) -> None:
        while True:
            try:
                async for job_id, code in self.bus.cancel_requests():
                    running = self._running.get(job_id)
                    if running is not None:
                        log.info("job %s: cancel requested (%s)", job_id, code)
                        running.halt("cancel", code)
            except (RedisError, OSError) as e:
                log.warning("cancel listener: %s; resubscribing in 1 s", e)
                await asyncio.sleep(1.0)


def _event(job_id: str, **event: object) -> restore_pb2.JobEvent:
    return restore_pb2.JobEvent(event=restore_pb2.RestoreEvent(job_id=job_id, **event))  # type: ignore[arg-type]


async def _first(*events: asyncio.Event, timeout_s: float | None = None) -> None:
    """Wait until any of `events` is set (or `timeout_s` passes)."""
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def serve_health(worker: Worker, port: int) -> http.server.ThreadingHTTPServer:
    """`/metrics` and `/healthz` on 127.0.0.1:`port`, in a daemon thread."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body, status = prometheus_client.generate_latest(worker.metrics.registry), 200
                kind = prometheus_client.CONTENT_TYPE_LATEST
            elif self.path == "/healthz":
                ok, kind = worker.healthy, "text/plain"
                body, status = (b"ok\n", 200) if ok else (b"redis unreachable\n", 503)
            else:
                body, status, kind = b"not found\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="health").start()
    return server


def default_devices(slots: int | None, device: str | None) -> list[str]:
    """One slot per GPU (slot i on cuda:i mod count), else one CPU slot; `device` pins every slot."""
    gpus = torch.cuda.device_count() if device is None else 0
    count = slots or max(gpus, 1)
    if device is not None:
        return [device] * count
    return [f"cuda:{i % gpus}" for i in range(count)] if gpus else ["cpu"] * count


async def serve(args: argparse.Namespace) -> None:
    bus = JobBus.from_url(args.redis)
    metrics = WorkerMetrics()
    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    devices = default_devices(args.slots, args.device)
    timing = BusTiming(args.visibility_timeout)
    worker = Worker(bus, name=name, devices=devices, timing=timing, metrics=metrics)
    health = serve_health(worker, args.metrics_port) if args.metrics_port else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"priorlab restore worker {name} on {redacted_url(args.redis)} ({len(devices)} slot(s))", flush=True
    )
    try:
        await worker.run(stop)
    finally:
        if health is not None:
            health.shutdown()
        await bus.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.restore", description=__doc__)
    parser.add_argument(
        "--redis",
        default=os.environ.get("PRIORLAB_REDIS_URL"),
        help="the job bus, e.g. redis://127.0.0.1:6379/0 (default: $PRIORLAB_REDIS_URL, the place for a URL"
        " with a password: other local users can read a command line)",
    )
    parser.add_argument("--slots", type=int, help="concurrent jobs (default: 1 per GPU, else 1)")
    parser.add_argument("--device", help="cpu, cuda or cuda:n for every slot (default: per slot, above)")
    parser.add_argument("--metrics-port", type=int, default=0, help="/metrics and /healthz (0 = off)")
    parser.add_argument("--name", help="worker name in results and logs (default: HOST-PID)")
    parser.add_argument(
        "--visibility-timeout",
        type=float,
        default=DEFAULT_VISIBILITY_TIMEOUT_S,
        help="seconds without a heartbeat before a job is retried elsewhere (the same on every worker and "
        "gateway: PRIORLAB_RESTORE_VISIBILITY_TIMEOUT_S); heartbeats every fifth of it",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads per process")
    args = parser.parse_args(argv)
    if not args.redis:
        parser.error("no job bus: give --redis URL or set PRIORLAB_REDIS_URL")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    asyncio.run(serve(args))
