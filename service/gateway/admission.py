"""Admission control for Colorize: shed what cannot be served in time, bound memory by pixels.

Two guards sit in front of the pipeline (issue #16):

* `Admission` refuses a request at once, with `Overloaded` (RESOURCE_EXHAUSTED and a `retry-after` in
  seconds), when the in-gateway queue is full or when its deadline cannot be met given the work ahead
  of it. The estimate is measured, not configured: for each work class (model, working size, size of
  the image in pixels) an EWMA of each completed request's *share of the pipeline*, the integral of
  dt / (requests running) over its life (processor sharing). With N requests overlapping (threads,
  Triton's dynamic batching) that is 1/throughput, not the latency, and the shares of all requests add
  up to the time the pipeline was busy, so the predicted latency of a new request is the sum of the
  costs of everything admitted and not yet finished, plus its own. (Sharing the busy time out per
  completion instead swings between a whole batch's time and zero, because Triton answers a batch of
  8 at once: just after a batch the estimate read a fifth of the real cost, and requests admitted on
  it missed their deadline in `bench/overload.py`.) The sum is then scaled by the measured *slowdown*,
  an EWMA of each completed request's real latency over the one predicted when it was admitted (at
  least 1): under overload the refusals and the clients take CPU from the pipeline on a small host,
  so it serves fewer requests per second than the costs measured before say, and the first
  2-second calls admitted past the knee missed their deadline by a few percent. Without admission
  control, an open loop past capacity queues every request, each waits longer than the one before,
  and once the wait passes the clients' deadline every call fails (DEADLINE_EXCEEDED) while the
  server keeps computing answers nobody reads.

* `PixelBudget` is a FIFO semaphore weighted by decoded pixels, acquired from the image header's size
  before any pixel is decoded: the pipeline peaks at 19-24 bytes per input pixel (measured: decoded
  RGB, L and a, b as float32, the sRGB conversion), so four 7000x7000 images decoding at once took the
  gateway from 0.5 to 3.6 GB (issue #16). A request larger than the whole budget runs alone.

`trim_heap` hands glibc's freed arenas back to the system after large requests (measured: after four
concurrent 49 M-pixel requests RSS stayed 200-230 MB over the baseline; `malloc_trim(0)` brought it
back to 10-60 MB over; `MALLOC_ARENA_MAX=2` alone still kept 200 MB, so it is not set), and
`map_large_allocations` (at start-up) gives every array of 16 MiB or more its own mapping, returned
when freed, which took the rest (3-5 MB over). `freeze_startup_heap` (once serving) keeps the
collector's full passes off start-up's objects: they stalled the event loop 37-45 ms, refusals too.

Everything here takes a clock, so the tests run on a fake one and never sleep.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import ctypes.util
import gc
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from service.errors import DeadlineExceeded, ResourceExhausted

log = logging.getLogger(__name__)

EWMA_ALPHA = 0.05  # weight of the newest sample: about the last 40 completions of a class count
HEADROOM = 0.8  # admit when the predicted latency fits in this share of the remaining deadline
SLOWDOWN_ALPHA = 0.1  # the slowdown follows the last ~10 completions: it must catch the knee quickly
MAX_SLOWDOWN = 4.0  # one stalled request (a Triton restart) must not shut the door for long
RETRY_AFTER_MAX_S = 60
PIXEL_CLASS_BASE = 1 << 18  # 512x512: class 0 up to it, then one class per doubling


class Overloaded(ResourceExhausted):
    """RESOURCE_EXHAUSTED with the number of seconds after which a retry is likely to be admitted."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(f"{message}; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


def pixel_class(pixels: int) -> int:
    """0 up to 512x512, then 1 per doubling of the pixel count (decode and postprocess scale with it)."""
    return max(0, (max(1, pixels) - 1).bit_length() - (PIXEL_CLASS_BASE - 1).bit_length())


@dataclass(frozen=True)
class WorkClass:
    """Requests whose service time is alike: same Triton model and working size, similar image size."""

    model: str
    working_size: int
    pixel_class: int

    @classmethod
    def of(cls, model: str, working_size: int, pixels: int) -> WorkClass:
        return cls(model, working_size, pixel_class(pixels))


class ServiceTimes:
    """EWMA of the seconds of pipeline busy time one completion of each work class costs."""

    def __init__(self, alpha: float = EWMA_ALPHA) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self._alpha = alpha
        self._by_class: dict[WorkClass, float] = {}
        self._overall: float | None = None

    def record(self, work: WorkClass, seconds: float) -> None:
        seconds = max(0.0, seconds)
        old = self._by_class.get(work)
        self._by_class[work] = seconds if old is None else old + self._alpha * (seconds - old)
        overall = self._overall
        self._overall = seconds if overall is None else overall + self._alpha * (seconds - overall)

    def estimate(self, work: WorkClass) -> float:
        """The class's EWMA; a class not seen yet borrows the all-class EWMA; 0 before any sample."""
        known = self._by_class.get(work)
        if known is not None:
            return known
        return self._overall or 0.0


@dataclass
class Ticket:
    """One admitted request: `start()` when it leaves the queue, `finish()` when it is done (always)."""

    work: WorkClass
    cost_s: float  # the estimate it was admitted with (its share of the predicted backlog)
    deadline: float  # on the admission clock
    predicted_s: float  # its latency as predicted at admission, before the slowdown
    admitted_at: float  # on the admission clock
    _admission: Admission = field(repr=False)
    started: bool = False
    finished: bool = False
    shares_at_start: float = 0.0  # the admission's share clock when it started running

    def start(self) -> None:
        """Leaves the queue to run; a request whose deadline passed while queued is not computed."""
        self._admission._start(self)
        remaining = self.deadline - self._admission.clock()
        if remaining <= 0:
            raise DeadlineExceeded(f"the deadline passed after {-remaining:.3f} s in the gateway's queue")

    def remaining_s(self) -> float:
        return self.deadline - self._admission.clock()

    def finish(self, *, completed: bool = True) -> None:
        """Idempotent. `completed` = it ran to the end, so its share is a service-time sample."""
        if not self.finished:
            self._admission._finish(self, completed)


class Admission:
    """The gateway's Colorize admission: a bounded queue and a deadline check from measured costs.

    `admit` never waits: it answers a `Ticket` or raises `Overloaded` in microseconds.
    """

    def __init__(
        self,
        *,
        max_queued: int,
        clock: Callable[[], float] = time.monotonic,
        service_times: ServiceTimes | None = None,
        headroom: float = HEADROOM,
    ) -> None:
        if max_queued < 0:
            raise ValueError(f"max_queued must be >= 0, got {max_queued}")
        self.clock = clock
        self.max_queued = max_queued
        self.times = service_times or ServiceTimes()
        self._headroom = headroom
        self._queued = 0
        self._running = 0
        self._backlog_s = 0.0  # sum of the cost estimates of everything admitted and not finished
        self._shares = 0.0  # processor-sharing clock: the integral of dt / running while running > 0
        self.slowdown = 1.0  # EWMA of real / predicted latency of completed requests, >= 1
        self._last = clock()
        self.admitted = 0
        self.refused = 0

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def running(self) -> int:
        return self._running

    @property
    def backlog_s(self) -> float:
        return self._backlog_s

    def predicted_latency_s(self, work: WorkClass) -> float:
        return (self._backlog_s + self.times.estimate(work)) * self.slowdown

    def admit(self, work: WorkClass, timeout_s: float) -> Ticket:
        """A ticket, or `Overloaded` now: the queue is full, or the deadline cannot be met."""
        if self._queued >= self.max_queued:
            self.refused += 1
            # A queue place frees when one running request finishes: about one cost of the class.
            raise Overloaded(
                f"the gateway's queue is full ({self._queued} requests waiting)",
                _retry_after(self.times.estimate(work)),
            )
        cost = self.times.estimate(work)
        raw = self._backlog_s + cost
        predicted = raw * self.slowdown
        if predicted > timeout_s * self._headroom:
            self.refused += 1
            raise Overloaded(
                f"the deadline ({timeout_s:.3f} s) cannot be met: about {predicted:.3f} s of work is "
                f"ahead of or in this request",
                _retry_after(predicted - timeout_s * self._headroom),
            )
        self.admitted += 1
        self._queued += 1
        self._backlog_s += cost
        now = self.clock()
        return Ticket(work, cost, now + timeout_s, raw, now, self)

    def _start(self, ticket: Ticket) -> None:
        if ticket.started:
            return
        self._settle()
        ticket.started = True
        ticket.shares_at_start = self._shares
        self._queued -= 1
        self._running += 1

    def _finish(self, ticket: Ticket, completed: bool) -> None:
        ticket.finished = True
        self._backlog_s = max(0.0, self._backlog_s - ticket.cost_s)
        if not ticket.started:
            self._queued -= 1
            return
        self._settle()
        self._running -= 1
        if completed:
            # Its share of the pipeline while it ran: what it cost the others, and they it.
            self.times.record(ticket.work, self._shares - ticket.shares_at_start)
            if ticket.predicted_s > 0:
                ratio = (self.clock() - ticket.admitted_at) / ticket.predicted_s
                self.slowdown += SLOWDOWN_ALPHA * (ratio - self.slowdown)
                self.slowdown = min(MAX_SLOWDOWN, max(1.0, self.slowdown))

    def _settle(self) -> None:
        """Advances the share clock to now."""
        now = self.clock()
        if self._running > 0:
            self._shares += (now - self._last) / self._running
        self._last = now


def _retry_after(seconds: float) -> int:
    return int(min(RETRY_AFTER_MAX_S, max(1, math.ceil(seconds))))


class PixelBudget:
    """A FIFO semaphore weighted by pixels: the decoded images in flight hold at most `capacity`.

    First come, first served: a small image does not overtake a large one that waits, so a large one
    cannot starve. A request larger than the capacity is clamped to it and runs alone.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"the pixel budget must be >= 1, got {capacity}")
        self.capacity = capacity
        self._available = capacity
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def available(self) -> int:
        return self._available

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def weight(self, pixels: int) -> int:
        return max(1, min(pixels, self.capacity))

    async def acquire(self, pixels: int) -> int:
        """Waits for `weight(pixels)` pixels; returns the weight to `release`. Cancellation-safe."""
        weight = self.weight(pixels)
        if not self._waiters and self._available >= weight:
            self._available -= weight
            return weight
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (weight, future)
        self._waiters.append(entry)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(weight)  # granted and cancelled in the same step: give it back
            else:
                if entry in self._waiters:
                    self._waiters.remove(entry)
                self._wake()  # a large waiter at the head that leaves may unblock smaller ones
            raise
        return weight

    def release(self, weight: int) -> None:
        self._available = min(self.capacity, self._available + weight)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self._available:
            weight, future = self._waiters.popleft()
            if future.done():
                continue
            self._available -= weight
            future.set_result(None)


def _load_libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim, libc.mallopt  # noqa: B018  (glibc only: AttributeError elsewhere)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()
TRIM_PIXELS = 4_000_000  # after a request this large, freed heap is handed back to the system
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 16 << 20


def trim_heap() -> bool:
    """`malloc_trim(0)`: glibc returns freed arena memory to the OS. False where it does not exist."""
    if _LIBC is None:
        return False
    _LIBC.malloc_trim(0)
    return True


def map_large_allocations() -> bool:
    """Every allocation of `MMAP_THRESHOLD_BYTES` or more gets its own mapping, unmapped when freed.

    glibc starts at 128 KiB and *raises* the threshold to the size of each mapped block that is freed
    (up to 32 MiB), so after the first large image the big arrays came from the arenas, which
    fragment: after four concurrent 50 M-pixel images RSS stayed 47-72 MB over the baseline even
    after `malloc_trim`. Fixed at 16 MiB the large planes are always mapped and go back at once (RSS
    back to +3-5 MB), while the arrays of ordinary photos (a 768x512 float plane is 1.5 MB) are still
    reused from the heap, without a page fault per request. Process-wide; False where glibc is absent.
    """
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def freeze_startup_heap() -> int:
    """Moves every object alive now (modules, compiled kernels, protobuf descriptors, the gRPC server)
    into the collector's permanent generation, after collecting what is garbage already; returns how
    many were frozen.

    A full (generation 2) collection walks every tracked object, and the gateway's start-up leaves a
    few hundred thousand that live as long as the process. Under load a full pass ran every ~15 s and
    held the GIL, and with it the event loop, for 37-45 ms: the slowest refusals at 2x load waited
    for it (bench.overload, issue #16: goal <= 50 ms). Frozen, the same passes took 2.3-2.5 ms. Call it
    once, from the process's entry point when the server is up: a test process that called it per
    server would keep every earlier test's objects for good.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
