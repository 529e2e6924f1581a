"""Admission control and the pixel budget (service/gateway/admission.py), on a fake clock: no sleeps."""

from __future__ import annotations

import asyncio
import math
import platform
import subprocess
import sys

import pytest

from service.errors import DeadlineExceeded, ResourceExhausted
from service.gateway.admission import (
    HEADROOM,
    RETRY_AFTER_MAX_S,
    Admission,
    Overloaded,
    PixelBudget,
    ServiceTimes,
    WorkClass,
    pixel_class,
    trim_heap,
)

SMALL = WorkClass.of("eccv16", 256, 512 * 512)
BIG = WorkClass.of("eccv16", 256, 7000 * 7000)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admission(max_queued: int = 100) -> tuple[Admission, Clock]:
    clock = Clock()
    return Admission(max_queued=max_queued, clock=clock), clock


def test_pixel_classes_double() -> None:
    assert pixel_class(1) == pixel_class(512 * 512) == 0
    assert pixel_class(512 * 512 + 1) == 1
    assert pixel_class(1024 * 1024) == 2
    assert SMALL != BIG and SMALL.model == "eccv16"


def test_service_time_is_an_ewma_per_class_and_unknown_classes_borrow_the_overall_one() -> None:
    times = ServiceTimes(alpha=0.5)
    assert times.estimate(SMALL) == 0.0  # nothing measured: admit
    times.record(SMALL, 0.1)
    times.record(SMALL, 0.3)
    assert times.estimate(SMALL) == pytest.approx(0.2)
    assert times.estimate(BIG) == pytest.approx(0.2)  # borrowed
    times.record(BIG, 2.0)
    assert times.estimate(BIG) == pytest.approx(2.0)
    assert times.estimate(SMALL) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        ServiceTimes(alpha=0)


def run_one(adm: Admission, clock: Clock, work: WorkClass, seconds: float) -> None:
    ticket = adm.admit(work, 100.0)
    ticket.start()
    clock.now += seconds
    ticket.finish()


def test_a_lone_request_costs_its_latency() -> None:
    adm, clock = admission()
    run_one(adm, clock, SMALL, 0.08)
    assert adm.times.estimate(SMALL) == pytest.approx(0.08)
    clock.now += 5  # idle time is not busy time
    run_one(adm, clock, SMALL, 0.08)
    assert adm.times.estimate(SMALL) == pytest.approx(0.08)


class Recorded(ServiceTimes):
    def __init__(self, alpha: float = 0.1) -> None:
        super().__init__(alpha)
        self.samples: list[float] = []

    def record(self, work: WorkClass, seconds: float) -> None:
        self.samples.append(seconds)
        super().record(work, seconds)


def recorded() -> tuple[Admission, Clock, Recorded]:
    clock, times = Clock(), Recorded()
    return Admission(max_queued=100, clock=clock, service_times=times), clock, times


def test_overlapping_requests_cost_their_share_of_the_pipeline_not_their_latency() -> None:
    """Four at once finishing 0.1 s apart: 0.1 s of throughput each, though the last took 0.4 s."""
    adm, clock, times = recorded()
    tickets = [adm.admit(SMALL, 10.0) for _ in range(4)]
    for t in tickets:
        t.start()
    for t in tickets:
        clock.now += 0.1
        t.finish()
    # Shares: 0.1/4, + 0.1/3, + 0.1/2, + 0.1: they add up to the 0.4 s the pipeline was busy.
    assert times.samples == pytest.approx(
        [0.025, 0.025 + 0.1 / 3, 0.025 + 0.1 / 3 + 0.05, 0.025 + 0.1 / 3 + 0.05 + 0.1]
    )
    assert sum(times.samples) == pytest.approx(0.4)
    assert adm.running == adm.queued == 0 and adm.backlog_s == 0


def test_a_batch_answered_at_once_does_not_swing_the_estimate() -> None:
    """Triton answers batches of 8 together, 0.8 s each, 16 in flight: 0.1 s per request."""
    adm, clock, times = recorded()
    for _ in range(6):
        tickets = [adm.admit(SMALL, 60.0) for _ in range(16)]
        for t in tickets:
            t.start()
        for batch in (tickets[:8], tickets[8:]):
            clock.now += 0.8
            for t in batch:
                t.finish()
            assert 0.049 <= adm.times.estimate(SMALL) <= 0.151
    assert sum(times.samples) / len(times.samples) == pytest.approx(0.1)
    assert adm.times.estimate(SMALL) == pytest.approx(0.1, abs=0.02)


def test_a_failure_while_others_run_keeps_their_share() -> None:
    adm, clock = admission()
    slow, failing = adm.admit(SMALL, 60.0), adm.admit(SMALL, 60.0)
    slow.start()
    failing.start()
    clock.now += 1.0
    failing.finish(completed=False)
    clock.now += 1.0
    slow.finish()
    assert adm.times.estimate(SMALL) == pytest.approx(1.5)  # half of the first second, all of the next


def test_a_deadline_the_backlog_cannot_meet_is_refused_at_once_with_retry_after() -> None:
    adm, clock = admission()
    run_one(adm, clock, SMALL, 0.1)  # cost 0.1 s
    admitted = [adm.admit(SMALL, 10.0) for _ in range(20)]  # 2 s of work ahead
    assert adm.backlog_s == pytest.approx(2.0)
    assert adm.predicted_latency_s(SMALL) == pytest.approx(2.1)
    with pytest.raises(Overloaded) as refused:
        adm.admit(SMALL, 2.0)  # 2.1 s > 0.8 x 2 s
    assert isinstance(refused.value, ResourceExhausted)  # RESOURCE_EXHAUSTED through the one table
    assert refused.value.retry_after_s == 1
    assert "cannot be met" in str(refused.value)
    assert adm.refused == 1 and adm.queued == 20  # the refusal left nothing behind
    adm.admit(SMALL, 2.7)  # 2.1 s fits in 0.8 x 2.7 s
    for t in admitted:
        t.finish(completed=False)


def test_retry_after_is_the_excess_in_whole_seconds_capped() -> None:
    adm, clock = admission()
    run_one(adm, clock, BIG, 5.0)
    ahead = [adm.admit(BIG, 1000.0) for _ in range(2)]  # 10 s ahead, +5 own = 15 s
    with pytest.raises(Overloaded) as refused:
        adm.admit(BIG, 10.0)  # 15 s of work for 8 s: 7 s too much
    assert refused.value.retry_after_s == math.ceil(15 - HEADROOM * 10) == 7
    more = [adm.admit(BIG, 1000.0) for _ in range(30)]
    with pytest.raises(Overloaded) as refused:
        adm.admit(BIG, 1.0)
    assert refused.value.retry_after_s == RETRY_AFTER_MAX_S
    for t in ahead + more:
        t.finish(completed=False)


def test_a_pipeline_slower_than_predicted_scales_the_predictions_until_the_costs_catch_up() -> None:
    """Requests that take twice their predicted latency scale the next predictions up at once; as the
    costs' slower EWMA catches up the scale goes back to 1, and never below."""

    def run(n: int, seconds: float) -> None:
        for _ in range(n):
            ticket = adm.admit(SMALL, 10.0)
            ticket.start()
            clock.now += seconds
            ticket.finish()

    adm, clock = admission()
    run_one(adm, clock, SMALL, 0.1)
    assert adm.slowdown == 1.0
    run(10, 0.2)  # the pipeline got twice as slow
    assert adm.times.estimate(SMALL) < 0.15  # the costs have not caught up yet ...
    assert adm.slowdown > 1.3  # ... the slowdown has
    assert adm.predicted_latency_s(SMALL) == pytest.approx(adm.times.estimate(SMALL) * adm.slowdown)
    run(200, 0.2)
    assert adm.slowdown < 1.05  # the costs say it now
    run(100, 0.01)
    assert adm.slowdown == 1.0


def test_a_full_queue_is_refused_even_with_a_long_deadline() -> None:
    adm, _ = admission(max_queued=2)
    first, second = adm.admit(SMALL, 60.0), adm.admit(SMALL, 60.0)
    with pytest.raises(Overloaded, match="queue is full"):
        adm.admit(SMALL, 60.0)
    first.start()  # leaves the queue: a place frees
    third = adm.admit(SMALL, 60.0)
    assert adm.queued == 2 and adm.running == 1
    for t in (first, second, third):
        t.finish(completed=False)
    assert adm.queued == adm.running == 0


def test_a_request_whose_deadline_passed_in_the_queue_is_not_computed() -> None:
    adm, clock = admission()
    ticket = adm.admit(SMALL, 1.0)
    clock.now += 1.5
    with pytest.raises(DeadlineExceeded, match="queue"):
        ticket.start()
    ticket.finish(completed=False)
    ticket.finish(completed=False)  # idempotent
    assert adm.running == adm.queued == 0
    assert adm.times.estimate(SMALL) == 0.0  # a failure is no service-time sample


def test_failures_do_not_charge_their_busy_time_to_the_next_success() -> None:
    adm, clock = admission()
    failing = adm.admit(SMALL, 10.0)
    failing.start()
    clock.now += 3.0
    failing.finish(completed=False)
    run_one(adm, clock, SMALL, 0.05)
    assert adm.times.estimate(SMALL) == pytest.approx(0.05)


def test_shedding_keeps_the_predicted_wait_inside_the_deadline_at_twice_capacity() -> None:
    """A simulated open loop: 2 arrivals per service time, 10 s deadlines. The backlog stays bounded."""
    adm, clock = admission(max_queued=1000)
    run_one(adm, clock, SMALL, 0.1)
    queue: list = []
    refused = 0
    for step in range(2000):  # 200 s of arrivals every 0.05 s
        clock.now += 0.05
        if step % 2 == 0 and queue:  # the server finishes one every 0.1 s, in order
            done = queue.pop(0)
            assert done.remaining_s() > 0  # no admitted request misses its deadline
            done.finish()
            if queue:
                queue[0].start()
        try:
            ticket = adm.admit(SMALL, 10.0)
        except Overloaded:
            refused += 1
            continue
        if not queue:
            ticket.start()
        queue.append(ticket)
    assert 900 <= refused <= 1100  # about half are shed
    assert adm.backlog_s <= HEADROOM * 10.0


def test_pixel_budget_queues_big_images_first_come_first_served() -> None:
    asyncio.run(_test_pixel_budget_queues_big_images_first_come_first_served())


async def _test_pixel_budget_queues_big_images_first_come_first_served() -> None:
    budget = PixelBudget(100)
    a = await budget.acquire(60)
    assert budget.available == 40
    big = asyncio.create_task(budget.acquire(60))
    small = asyncio.create_task(budget.acquire(10))  # fits, but must not overtake the big one
    await asyncio.sleep(0)
    assert not big.done() and not small.done() and budget.waiting == 2
    budget.release(a)
    assert await big == 60 and await small == 10
    assert budget.available == 30
    budget.release(60)
    budget.release(10)
    assert budget.available == 100


def test_an_image_larger_than_the_budget_runs_alone() -> None:
    asyncio.run(_test_an_image_larger_than_the_budget_runs_alone())


async def _test_an_image_larger_than_the_budget_runs_alone() -> None:
    budget = PixelBudget(100)
    assert budget.weight(10_000) == 100 and budget.weight(0) == 1
    first = await budget.acquire(1)
    huge = asyncio.create_task(budget.acquire(10_000))
    await asyncio.sleep(0)
    assert not huge.done()
    budget.release(first)
    assert await huge == 100 and budget.available == 0
    with pytest.raises(ValueError):
        PixelBudget(0)


def test_a_cancelled_waiter_leaves_the_queue_and_unblocks_the_ones_behind() -> None:
    asyncio.run(_test_a_cancelled_waiter_leaves_the_queue_and_unblocks_the_ones_behind())


async def _test_a_cancelled_waiter_leaves_the_queue_and_unblocks_the_ones_behind() -> None:
    budget = PixelBudget(100)
    held = await budget.acquire(50)
    big = asyncio.create_task(budget.acquire(80))
    small = asyncio.create_task(budget.acquire(30))
    await asyncio.sleep(0)
    big.cancel()
    with pytest.raises(asyncio.CancelledError):
        await big
    assert await small == 30 and budget.waiting == 0
    budget.release(held)
    budget.release(30)
    assert budget.available == 100


def test_a_grant_cancelled_before_it_resumes_is_given_back() -> None:
    asyncio.run(_test_a_grant_cancelled_before_it_resumes_is_given_back())


async def _test_a_grant_cancelled_before_it_resumes_is_given_back() -> None:
    budget = PixelBudget(100)
    held = await budget.acquire(100)
    waiter = asyncio.create_task(budget.acquire(100))
    await asyncio.sleep(0)
    budget.release(held)  # granted ...
    waiter.cancel()  # ... and cancelled before it ran
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert budget.available == 100


GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="malloc_trim and mallopt are glibc's")
def test_trim_heap_runs_where_glibc_is() -> None:
    assert trim_heap() is True


_MAPPING_PROBE = """
import sys
from pathlib import Path
import numpy as np
from service.gateway.admission import MMAP_THRESHOLD_BYTES, map_large_allocations

def anonymous():
    spans = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) == 5 and fields[1].startswith("rw"):  # no path: anonymous
            spans.add(tuple(int(x, 16) for x in fields[0].split("-")))
    return spans

if sys.argv[1] == "fixed":
    assert map_large_allocations()
# Freeing this 30 MB block raises glibc's dynamic threshold to 30 MB (its cap is 32 MB) ...
big = np.ones(30 << 18, np.float32)
del big
before = anonymous()
plane = np.ones(MMAP_THRESHOLD_BYTES // 4 + (1 << 18), np.float32)  # ... so this 17 MB plane
own = any(end - start >= plane.nbytes for start, end in anonymous() - before)
del plane
back = not any(end - start >= MMAP_THRESHOLD_BYTES for start, end in anonymous() - before)
print(own, back)
"""


@pytest.mark.skipif(not GLIBC, reason="malloc_trim and mallopt are glibc's")
@pytest.mark.parametrize(("mode", "expected"), [("fixed", "True True"), ("glibc default", "False True")])
def test_large_arrays_get_their_own_mapping_and_give_it_back(mode: str, expected: str) -> None:
    """In a fresh interpreter (a test process's allocator carries every earlier test's history): with
    the fixed threshold a 17 MB plane is its own mapping, gone when freed; with glibc's moving one it
    comes from the heap, where it fragments what is freed around it."""
    probe = subprocess.run(
        [sys.executable, "-c", _MAPPING_PROBE, mode], capture_output=True, text=True, timeout=60, check=True
    )
    assert probe.stdout.split() == expected.split()


_FREEZE_PROBE = """
import gc, weakref
from service.gateway.admission import freeze_startup_heap

class Node:
    pass

kept = Node()  # alive at the freeze: frozen
cycle = Node()
cycle.me = cycle  # garbage already (a cycle only the collector frees): collected, not frozen
collected = []
weakref.finalize(cycle, collected.append, True)
del cycle
frozen = freeze_startup_heap()
print(frozen > 1000, frozen == gc.get_freeze_count(), collected == [True], gc.is_tracked(kept))
print(all(kept is not o for g in range(3) for o in gc.get_objects(g)))  # not in any generation walked
"""


def test_the_startup_heap_is_frozen_after_its_garbage_is_collected() -> None:
    """In a fresh interpreter: freezing is process-wide and for good."""
    probe = subprocess.run(
        [sys.executable, "-c", _FREEZE_PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    assert probe.stdout.split() == ["True"] * 5
