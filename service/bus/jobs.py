"""The Restore job bus on Redis: queues, job state, per-job event streams, cancel, worker liveness.

The gateway submits, watches and cancels; workers claim, start, heartbeat, publish and finish or release.
Torch-free and asyncio (`redis.asyncio`), so both sides share this one module.

Why Redis Streams consumer groups and not arq: DIP jobs run for seconds to hours, so a worker must take a
job only when it has a free slot (XREADGROUP COUNT 1 when a slot frees, so load balances itself), prove it
is alive while the job runs (XCLAIM JUSTID resets the entry's idle time: the heartbeat), and a dead
worker's job must go to another worker (XAUTOCLAIM of pending entries idle past the visibility timeout).
Streams give exactly these as commands; arq's jobs are function calls with a fixed timeout, re-run on
restart of the same worker, with no per-iteration progress stream and no fencing of a zombie worker.

Keys (prefix `restore:`):

* `queue:high|normal|low`  streams, consumer group `workers`; an entry is `{job: <id>}`
* `queued`                 hash level -> jobs waiting (state `queued`): the queue bound and positions
* `job:<id>`               hash: `job` (RestoreJob bytes, dropped at the end), state, level, client,
                           worker, attempts, max_attempts, ttl
* `job:<id>:events`        stream of JobEvent bytes (field `e`). The enqueue and release scripts write
                           their Queued event as plain fields (`queued`, `length`): Lua cannot build protobuf
* `job:<id>:cancel`        a cancel request: the name of the gRPC status code the job ends with
                           ("CANCELLED", "DEADLINE_EXCEEDED")
* `job:<id>:attempts`      list, one line per attempt that failed without an answer ("attempt 1: worker
                           w1 stopped responding"), written by the start script when it takes a job over
* `dead:<id>`              the dead-letter record of a job that used up its attempts: hash `job` (the
                           RestoreJob bytes, to inspect or submit again), client, attempts, `failures`
                           (the attempts list, one line each), ended_unix. Kept for the result TTL
* `idem:<client>:<key>`    the job id of a SubmitRestore/Restore/RestoreStream idempotency key; no expiry
                           while the job is unfinished, the result TTL from its end (as `job:<id>`)
* `client:<id>`            set of the client's unfinished jobs (the per-client quota)
* `workers`                zset worker name -> last heartbeat (unix seconds)
* pub/sub `restore:cancel` "<job id> <code name>": running workers stop the job within one iteration

Job ids (`new_job_id`) are 41 characters: `t`, the submission time in milliseconds (12 hex digits), the
owner tag (8 hex digits: the start of SHA-256 of the submitting client id, `owner_tag`) and 80 random
bits (20 hex digits). The random bits make an id unguessable, so with auth off an id is the capability to
watch or cancel its job. The time is what lets a gateway tell a **lost** job from an expired one without
any state of its own: a job's record lives at least until its submission plus the result TTL (the TTL
starts when the job ends), so a record missing before then was lost — Redis restarted without persistence
(or lost its last second of writes with it), or someone flushed it — and the gateway answers DATA_LOSS,
"job <id> was lost" (`missing`). Past that time the record may simply have expired, and NOT_FOUND says
both. The tag is what lets it say so to the job's owner only (auth on, `restorer.check_owner`): a record
that is there names its client, one that vanished cannot, so the id itself says whose it was. Anyone
else gets NOT_FOUND (`unknown_job`) whether the job is there or vanished, and cannot probe ids.
Chosen over an index of each client's jobs, which would vanish with the records it should vouch for. A
tag and not an HMAC of the id: an HMAC needs a key shared by every gateway and kept across restarts (a
new secret setting), and buys nothing here — the caller's identity comes from their token, not from the
id, so a forged tag only ever matches the forger's own (non-existent) jobs. The tag is a digest, not a
secret: it tells whoever holds an id a 32-bit fingerprint of its owner's client id. Ids of before tags
(33 characters, no tag) still parse (`submitted_unix`); with auth on, one whose record vanished reads as
NOT_FOUND to everyone, as it names no owner. Ids of before that (32 hex digits, uuid4) read as NOT_FOUND.

Persistence and restarts: `make run` (and compose.yaml) run Redis with an append-only file, fsync every
second, so a restart keeps every job but the writes of its last second. Both sides reconnect by
themselves and recreate what they own: the consumer groups (XGROUP CREATE ... MKSTREAM: the enqueue
script for its level, a worker's `claim` for all levels when Redis answers NOGROUP), and the Lua scripts
(redis-py's scripts run EVALSHA and SCRIPT LOAD again on NoScriptError). A watcher's event stream
(`events`) retries a Redis outage with backoff for `RECONNECT_S` before it answers UNAVAILABLE.

States: queued -> running -> done | failed | cancelled, and running -> queued when a worker shuts down
gracefully. Every transition is one Lua script, so counters and sets never drift, and every write of a
worker is fenced by the job's `worker` field: a worker that was presumed dead cannot publish any more.

Retry policy: a running job's worker heartbeats every few seconds; an entry idle past the visibility
timeout (default 30 s) is claimed by another worker with a free slot and started again from scratch
(DIP restarts cheaply; the seed makes it the same run). Each start counts one attempt; a job claimed
after `max_attempts` starts (default 2) ends with ABORTED, "its worker stopped responding on each of 2
attempts (attempt 1: ...; attempt 2: ...)", and its dead-letter record `dead:<id>` keeps the request and
the failure of each attempt for the result TTL. Errors of the request itself (INVALID_ARGUMENT) or bugs
(INTERNAL) are not retried. A job is never dropped silently.
The periods (visibility timeout, heartbeat, when a worker counts as gone) are derived in `timing`.

Failures: a job that ends without a result ends with a `service.errors` exception, and the bus carries its
kind as the gRPC status code of `service.errors.STATUS_CODES`: by name in Redis strings (cancel key and
message), by number in `JobFailure.code` (a uint32 in restore.proto). `failure_event` and `failure_error`
are the two directions, so the gateway raises again exactly the kind the worker (or a cancel) ended with.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import grpc
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.errors import (
    DataLoss,
    InvalidArgument,
    NotFound,
    PriorlabError,
    ResourceExhausted,
    Unavailable,
    echo,
    error_for,
    status_name,
)
from service.pb.priorlab.v1 import restore_pb2

PREFIX = "restore:"
WORKERS_KEY = f"{PREFIX}workers"  # the heartbeat zset: worker name -> unix seconds
GROUP = "workers"
LEVELS = ("high", "normal", "low")  # claim order
CANCEL_CHANNEL = "restore:cancel"
_RELEASED_IDLE_MS = 10**12  # a released entry looks idle for ages: the next sweep of any worker takes it
_EVENTS_MAXLEN = 10_000  # progress events kept per job (approximate trim; the result is always last)
RECONNECT_S = 30.0  # how long a watcher's event stream waits for Redis to come back
_BACKOFF_S = (0.1, 2.0)  # first and longest wait between reconnect attempts (doubling)
JOB_ID_PREFIX = "t"
_TAG_DIGITS = 8  # the owner tag: 32 bits of SHA-256 of the client id
_ID_LENGTH = 1 + 12 + _TAG_DIGITS + 20  # prefix, time in ms, owner tag, 80 random bits
_UNTAGGED_ID_LENGTH = 1 + 12 + 20  # the ids of before tags, still on the bus for a result TTL
_HEX_DIGITS = frozenset("0123456789abcdef")
MAX_IDEMPOTENCY_KEY = 128
CLOCK_SKEW_S = 60.0  # how far a gateway's clock may be behind the one that made a job id

# JobFailure.code holds the status code's number; the bus's API speaks in names (service.errors).
_NUMBERS = {code.name: code.value[0] for code in grpc.StatusCode}
_NAMES = {number: name for name, number in _NUMBERS.items()}

P = ParamSpec("P")
R = TypeVar("R")

_FENCE = """
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return 0
end
"""

_ENQUEUE = """
local idem = ARGV[9] == '1'
if idem then
  local first = redis.call('GET', KEYS[6])
  if first then return {0, first, 0} end
end
pcall(redis.call, 'XGROUP', 'CREATE', KEYS[5], 'workers', '0', 'MKSTREAM')
local waiting, ahead = 0, 0
local counts = redis.call('HGETALL', KEYS[4])
for i = 1, #counts, 2 do
  local n = tonumber(counts[i + 1])
  waiting = waiting + n
  for j = 10, #ARGV do
    if counts[i] == ARGV[j] then ahead = ahead + n end
  end
end
if waiting >= tonumber(ARGV[5]) then return {-1, waiting, 0} end
local mine = redis.call('SCARD', KEYS[3])
if mine >= tonumber(ARGV[6]) then return {-2, mine, 0} end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'job', ARGV[2], 'state', 'queued', 'level', ARGV[3],
  'client', ARGV[4], 'worker', '', 'attempts', 0, 'max_attempts', ARGV[8], 'ttl', ARGV[7],
  'idem', idem and KEYS[6] or '')
if idem then redis.call('SET', KEYS[6], ARGV[1]) end
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[4], ARGV[3], 1)
redis.call('XADD', KEYS[2], '*', 'queued', ahead + 1, 'length', waiting + 1)
redis.call('XADD', KEYS[5], '*', 'job', ARGV[1])
return {1, ahead + 1, waiting + 1}
"""

_START = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'running' then
  redis.call('XACK', KEYS[4], 'workers', ARGV[2])
  redis.call('XDEL', KEYS[4], ARGV[2])
  return {'skip'}
end
if state == 'queued' then redis.call('HINCRBY', KEYS[3], redis.call('HGET', KEYS[1], 'level'), -1) end
local previous = redis.call('HGET', KEYS[1], 'worker')
local before = tonumber(redis.call('HGET', KEYS[1], 'attempts'))
if state == 'running' and before > 0 then
  -- taken over from a worker that went silent past the visibility timeout: that attempt failed
  redis.call('RPUSH', KEYS[5], 'attempt ' .. before .. ': worker ' .. previous ..
    ' stopped responding (no heartbeat for the visibility timeout)')
end
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1])
local cancel = redis.call('GET', KEYS[2])
if cancel then return {'cancelled', cancel} end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts > tonumber(redis.call('HGET', KEYS[1], 'max_attempts')) then
  local failures = redis.call('LRANGE', KEYS[5], 0, -1)
  local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl'))
  redis.call('HSET', KEYS[6], 'job', redis.call('HGET', KEYS[1], 'job') or '',
    'client', redis.call('HGET', KEYS[1], 'client'), 'attempts', attempts - 1,
    'failures', table.concat(failures, '\\n'), 'ended_unix', redis.call('TIME')[1])
  redis.call('EXPIRE', KEYS[6], ttl)
  return {'exhausted', attempts - 1, unpack(failures)}
end
return {'run', attempts, redis.call('HGET', KEYS[1], 'job')}
"""

_PROGRESS = (
    _FENCE
    + f"""
redis.call('XADD', KEYS[2], 'MAXLEN', '~', {_EVENTS_MAXLEN}, '*', 'e', ARGV[2])
return 1
"""
)

_HEARTBEAT = (
    _FENCE
    + """
redis.call('XCLAIM', KEYS[2], 'workers', ARGV[1], 0, ARGV[2], 'JUSTID')
return 1
"""
)

_FINISH = (
    _FENCE
    + """
redis.call('XADD', KEYS[2], '*', 'e', ARGV[3])
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl'))
redis.call('HSET', KEYS[1], 'state', ARGV[4])
redis.call('HDEL', KEYS[1], 'job')
local client = ARGV[5] .. 'client:' .. redis.call('HGET', KEYS[1], 'client')
redis.call('SREM', client, redis.call('HGET', KEYS[1], 'id'))
redis.call('XACK', KEYS[3], 'workers', ARGV[2])
redis.call('XDEL', KEYS[3], ARGV[2])
for _, key in ipairs({KEYS[1], KEYS[2], KEYS[4], KEYS[5]}) do redis.call('EXPIRE', key, ttl) end
local idem = redis.call('HGET', KEYS[1], 'idem')
if idem and idem ~= '' then redis.call('EXPIRE', idem, ttl) end
return 1
"""
)

_RELEASE = (
    _FENCE
    + """
redis.call('HSET', KEYS[1], 'state', 'queued', 'worker', '')
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('HINCRBY', KEYS[3], redis.call('HGET', KEYS[1], 'level'), 1)
redis.call('XCLAIM', KEYS[2], 'workers', ARGV[1], 0, ARGV[2], 'IDLE', ARGV[3], 'JUSTID')
local waiting = 0
for _, n in ipairs(redis.call('HVALS', KEYS[3])) do waiting = waiting + tonumber(n) end
redis.call('XADD', KEYS[4], '*', 'queued', 1, 'length', waiting)
return 1
"""
)

_CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if state ~= 'queued' and state ~= 'running' then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[4], ARGV[5] .. ' ' .. ARGV[1])
if state == 'queued' then
  local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl'))
  redis.call('HINCRBY', KEYS[4], redis.call('HGET', KEYS[1], 'level'), -1)
  redis.call('HSET', KEYS[1], 'state', 'cancelled')
  redis.call('HDEL', KEYS[1], 'job')
  redis.call('XADD', KEYS[3], '*', 'e', ARGV[2])
  redis.call('SREM', ARGV[3] .. 'client:' .. redis.call('HGET', KEYS[1], 'client'), ARGV[5])
  for _, key in ipairs({KEYS[1], KEYS[2], KEYS[3]}) do redis.call('EXPIRE', key, ttl) end
  local idem = redis.call('HGET', KEYS[1], 'idem')
  if idem and idem ~= '' then redis.call('EXPIRE', idem, ttl) end
end
return 1
"""


def level_of(priority: int) -> str:
    """Priority > 0 -> high, 0 -> normal, < 0 -> low."""
    return "high" if priority > 0 else "normal" if priority == 0 else "low"


def is_terminal(event: restore_pb2.JobEvent) -> bool:
    return event.HasField("failure") or (event.HasField("event") and event.event.HasField("result"))


def redacted_url(url: str) -> str:
    """A Redis URL fit to print: the address without the password (a banner or a log is no secret)."""
    scheme, sep, rest = url.partition("://")
    _, at, host = rest.rpartition("@")
    if not (sep and at):
        return url
    return f"{scheme}://{host}   (with a password)"


def failure_event(error: PriorlabError) -> restore_pb2.JobEvent:
    """The terminal event of a job that ends with `error`: its status code and message."""
    name = status_name(error)
    failure = restore_pb2.JobFailure(status=name, code=_NUMBERS[name], message=error.message)
    return restore_pb2.JobEvent(failure=failure)


def failure_error(failure: restore_pb2.JobFailure) -> PriorlabError:
    """The exception a failure event stands for: the kind `failure_event` was given, with its message."""
    return error_for(failure.status or _NAMES.get(failure.code, "UNKNOWN"), failure.message)


def _code_name(raw: bytes | str) -> str:
    """A status code as a cancel key or message holds it: its name.

    Gateways before names wrote the number (`grpc.StatusCode.CANCELLED.value[0]`); a job cancelled by one
    during a rolling deploy is still read right, for one `isdigit`. The other way round does not work (an
    older worker cannot read a name), so a deploy updates the workers before the gateways.
    """
    text = raw.decode() if isinstance(raw, bytes) else raw
    return _NAMES.get(int(text), "UNKNOWN") if text.isdigit() else text


def owner_tag(client: str) -> str:
    """The 8 hex digits a job id carries for the client that submitted it (see the module)."""
    return hashlib.sha256(client.encode()).hexdigest()[:_TAG_DIGITS]


def new_job_id(now: float, client: str = "") -> str:
    """A fresh job id: `t`, the submission time in ms, `client`'s owner tag, 80 random bits (see the module).

    `client` is the quota key the job is submitted under (the token's client id with auth on).
    """
    return f"{JOB_ID_PREFIX}{int(now * 1000):012x}{owner_tag(client)}{secrets.token_hex(10)}"


def _id_parts(job_id: str) -> tuple[float, str] | None:
    """(submission time, owner tag) of an id `new_job_id` makes, or made before tags (tag ""); else None."""
    if len(job_id) not in (_ID_LENGTH, _UNTAGGED_ID_LENGTH) or not job_id.startswith(JOB_ID_PREFIX):
        return None
    if not set(job_id[1:]) <= _HEX_DIGITS:
        return None
    tag = job_id[13 : 13 + _TAG_DIGITS] if len(job_id) == _ID_LENGTH else ""
    return int(job_id[1:13], 16) / 1000, tag


def submitted_unix(job_id: str) -> float | None:
    """The submission time a `new_job_id` carries (either form); None for an id of another form."""
    parts = _id_parts(job_id)
    return None if parts is None else parts[0]


def tagged_for(job_id: str, client: str) -> bool:
    """Whether `job_id` carries `client`'s owner tag; False for an id without one (older, or not ours)."""
    parts = _id_parts(job_id)
    return parts is not None and parts[1] == owner_tag(client)


def unknown_job(job_id: str) -> NotFound:
    """The answer for an id with no record that may never have been, or have expired: one text for all."""
    return NotFound(
        f"job {echo(job_id)} not found (unknown, expired after its result TTL, or lost with the job bus)"
    )


def missing(job_id: str, *, ttl_s: float, now: float) -> PriorlabError:
    """The error for a job id whose record is not on the bus: lost (DATA_LOSS) when it cannot have expired.

    A record lives until at least its submission plus the result TTL, so one missing before then was lost.
    The id's time is the submitting gateway's clock: another gateway's may be behind by `CLOCK_SKEW_S`.
    Whose the id is, is not checked here: with auth on, `restorer.check_owner` lets only the client the
    id is tagged for get this far (everyone else gets `unknown_job`).
    """
    submitted = submitted_unix(job_id)
    if submitted is not None and submitted - CLOCK_SKEW_S <= now < submitted + ttl_s:
        return DataLoss(
            f"job {job_id} was lost: its record vanished from the job bus (Redis restarted without "
            f"persistence, or was flushed) within {max(now - submitted, 0):.0f} s of its submission; "
            "submit it again"
        )
    return unknown_job(job_id)


def check_idempotency_key(key: str) -> None:
    """At most `MAX_IDEMPOTENCY_KEY` printable ASCII characters (`InvalidArgument` otherwise)."""
    if len(key) > MAX_IDEMPOTENCY_KEY or not (key.isascii() and key.isprintable()):
        raise InvalidArgument(
            f"idempotency_key must be at most {MAX_IDEMPOTENCY_KEY} printable ASCII characters, "
            f"got {echo(key)}"
        )


def _redis_errors(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Redis unreachable -> `Unavailable` (UNAVAILABLE at the gateway): the one translation point."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            raise Unavailable(f"the Restore job bus (Redis) is unreachable: {e}") from None

    return wrapper


class _DeliversCancels(AbstractConnection):
    """Mixed into every connection of the bus's pool (`JobBus.from_url`): a cancel that reaches a
    command while its write is awaited is raised, never lost.

    redis-py awaits each command's write in `asyncio.wait_for(write, socket_timeout)` when a socket
    timeout is set (redis-py 8.1's default: 5 s), and Python 3.11's `wait_for` swallows a cancel that
    lands between the write completing and the waiting task resuming: it returns as if the task had not
    been cancelled (python/cpython#86296, #107547; 3.12 rebuilt `wait_for` on `asyncio.timeout`). An
    `asyncio.timeout` expiring there (`GET /v1/restore/{id}`), a gRPC cancel or a shutdown was lost, and
    the watch of a job that no worker runs read on forever. A cancel request that came during the write
    would have been raised at its last await, so one that the task's count of requests shows after a
    write that returned was swallowed: raise it here. Its command's reply would be left unread, so the
    connection is dropped first, as redis-py drops one whose write was cancelled.
    """

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        task = asyncio.current_task()
        asked = task.cancelling() if task is not None else 0
        await super().send_packed_command(command, check_health)
        if task is not None and task.cancelling() > asked:
            await self.disconnect(nowait=True)
            raise asyncio.CancelledError


@dataclass(frozen=True)
class Claim:
    """A queue entry a worker has taken: the job id, its priority level and the stream entry id."""

    job_id: str
    level: str
    entry: str


@dataclass(frozen=True)
class Start:
    """What the start script decided: `run` (with the job), `skip`, `cancelled` (code) or `exhausted`.

    `code` is the status code name a cancel asked for (`cancelled` only).
    """

    outcome: str
    attempt: int = 0
    job: restore_pb2.RestoreJob | None = None
    code: str = ""
    failures: tuple[str, ...] = ()  # exhausted: how each attempt failed (the dead-letter record's lines)


class JobBus:
    """One Redis connection pool and the scripts; every method is one round trip unless it says so."""

    def __init__(self, client: aioredis.Redis, prefix: str = PREFIX) -> None:
        self.redis, self.prefix = client, prefix
        self._enqueue = client.register_script(_ENQUEUE)
        self._start = client.register_script(_START)
        self._progress = client.register_script(_PROGRESS)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._finish = client.register_script(_FINISH)
        self._release = client.register_script(_RELEASE)
        self._cancel = client.register_script(_CANCEL)

    @classmethod
    def from_url(cls, url: str) -> JobBus:
        # Lazy: nothing connects until the first command, so a gateway starts while Redis is down.
        # A pooled connection to a Redis that restarted fails once ("Connection closed by server"): each
        # command is retried on a new connection a few times within a second (redis-py's `from_url` sets
        # no retry). Longer outages are the callers' backoff loops (worker, `events`).
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), 3)
        errors = [RedisConnectionError, RedisTimeoutError]
        client = aioredis.Redis.from_url(url, socket_connect_timeout=2.0, retry=retry, retry_on_error=errors)
        # The URL's scheme picks the class (TCP, TLS, unix socket); each gets cancels delivered.
        pool = client.connection_pool
        pool.connection_class = type(
            f"CancelDelivering{pool.connection_class.__name__}", (_DeliversCancels, pool.connection_class), {}
        )
        return cls(client)

    async def close(self) -> None:
        await self.redis.aclose()

    def _job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _stream(self, level: str) -> str:
        return f"{self.prefix}queue:{level}"

    # --- gateway side ---

    async def submit(
        self, job: restore_pb2.RestoreJob, *, max_queue: int, max_per_client: int, ttl_s: int
    ) -> restore_pb2.Queued:
        """Queue `job` unless the queue or the client's quota is full (`ResourceExhausted`)."""
        _, queued = await self.submit_once(
            job, max_queue=max_queue, max_per_client=max_per_client, ttl_s=ttl_s, idempotency_key=""
        )
        assert queued is not None  # without a key a job is always queued (or refused)
        return queued

    @_redis_errors
    async def submit_once(
        self,
        job: restore_pb2.RestoreJob,
        *,
        max_queue: int,
        max_per_client: int,
        ttl_s: int,
        idempotency_key: str,
    ) -> tuple[str, restore_pb2.Queued | None]:
        """`submit` with an idempotency key (empty: none): the job id and its place in the queue.

        If this client used the key before (and that job's result has not expired), nothing is queued:
        the first job's id comes back, with None. One round trip, so two racing retries make one job.
        """
        level = level_of(job.request.priority)
        key = self._job(job.job_id)
        keys = [key, f"{key}:events", f"{self.prefix}client:{job.client_id}", f"{self.prefix}queued"]
        keys += [self._stream(level), f"{self.prefix}idem:{job.client_id}:{idempotency_key}"]
        ahead = LEVELS[: LEVELS.index(level) + 1]
        args: list[Any] = [job.job_id, job.SerializeToString(), level, job.client_id, max_queue]
        args += [max_per_client, ttl_s, job.max_attempts, "1" if idempotency_key else "0", *ahead]
        status, a, b = await self._enqueue(keys=keys, args=args)
        if status == 0:
            return a.decode(), None
        if status == -1:
            raise ResourceExhausted(f"the Restore queue is full: {a} jobs waiting (limit {max_queue})")
        if status == -2:
            raise ResourceExhausted(
                f"client {echo(job.client_id)} has {a} unfinished Restore jobs (limit {max_per_client})"
            )
        return job.job_id, restore_pb2.Queued(position=a, queue_length=b)

    @_redis_errors
    async def cancel(self, job_id: str, error: PriorlabError, *, ttl_s: float = 0.0) -> bool:
        """Ask a job to end with `error` (kind and message). False if it had ended.

        A job not on the bus raises `missing`'s error (NotFound, or DataLoss within `ttl_s` of its start).
        """
        key = self._job(job_id)
        event = failure_event(error).SerializeToString()
        keys = [key, f"{key}:cancel", f"{key}:events", f"{self.prefix}queued"]
        args = [status_name(error), event, self.prefix, CANCEL_CHANNEL, job_id]
        done = await self._cancel(keys=keys, args=args)
        if done == -1:
            raise missing(job_id, ttl_s=ttl_s, now=time.time())
        return bool(done)

    async def events(
        self, job_id: str, *, block_s: float = 1.0, ttl_s: float = 0.0, reconnect_s: float = RECONNECT_S
    ) -> AsyncIterator[restore_pb2.JobEvent]:
        """A job's events from the first, then live, until the terminal one (result or failure).

        A job not on the bus, or whose record vanishes while it is read, raises `missing`'s error. Redis
        unreachable at the first read is `Unavailable` at once; once attached, a read is retried with
        backoff for `reconnect_s` (a Redis restart), then `Unavailable`.
        """
        key = f"{self._job(job_id)}:events"
        last = "0-0"
        attached, down_since, wait_s = False, 0.0, _BACKOFF_S[0]
        while True:
            try:
                batch = await self._read(key, last, block_s)
            except Unavailable:
                now = time.monotonic()
                if not attached or (down_since and now - down_since >= reconnect_s):
                    raise
                down_since = down_since or now
                await asyncio.sleep(wait_s)
                wait_s = min(2 * wait_s, _BACKOFF_S[1])
                continue
            attached, down_since, wait_s = True, 0.0, _BACKOFF_S[0]
            if batch is None:
                raise missing(job_id, ttl_s=ttl_s, now=time.time())
            for entry, fields in batch:
                last = entry
                event = self._decode(job_id, fields)
                yield event
                if is_terminal(event):
                    return

    @_redis_errors
    async def _read(self, key: str, last: str, block_s: float) -> list[tuple[str, dict[bytes, bytes]]] | None:
        if last == "0-0" and not await self.redis.exists(key):
            return None  # unknown or expired: say so at once rather than after a block
        reply: Any = await self.redis.xread({key: last}, count=100, block=int(block_s * 1000))
        if reply:
            return [(entry.decode(), fields) for entry, fields in reply[0][1]]
        return [] if await self.redis.exists(key) else None

    @staticmethod
    def _decode(job_id: str, fields: dict[bytes, bytes]) -> restore_pb2.JobEvent:
        if b"e" in fields:
            return restore_pb2.JobEvent.FromString(fields[b"e"])
        queued = restore_pb2.Queued(position=int(fields[b"queued"]), queue_length=int(fields[b"length"]))
        return restore_pb2.JobEvent(event=restore_pb2.RestoreEvent(job_id=job_id, queued=queued))

    @_redis_errors
    async def queue_length(self) -> int:
        return sum(int(n) for n in await self.redis.hvals(f"{self.prefix}queued"))

    @_redis_errors
    async def live_workers(self, within_s: float) -> int:
        return int(await self.redis.zcount(f"{self.prefix}workers", time.time() - within_s, "+inf"))

    # --- worker side ---

    async def ensure_groups(self) -> None:
        for level in LEVELS:
            try:
                await self.redis.xgroup_create(self._stream(level), GROUP, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    async def claim(self, worker: str, *, visibility_s: float, block_s: float) -> list[Claim]:
        """Take one job (rarely more: see below), or none after `block_s`.

        First a job whose worker went silent past `visibility_s` (or released it), then the oldest new
        job of the highest level, else wait for one. Several round trips. A consumer group gone (Redis
        restarted without persistence, or flushed: NOGROUP) is created again, and the claim finds none.
        """
        try:
            return await self._claim(worker, visibility_s=visibility_s, block_s=block_s)
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            await self.ensure_groups()
            return []

    async def _claim(self, worker: str, *, visibility_s: float, block_s: float) -> list[Claim]:
        for level in LEVELS:
            autoclaimed: Any = await self.redis.xautoclaim(
                self._stream(level), GROUP, worker, int(visibility_s * 1000), "0-0", count=1
            )
            claims = self._claims(level, autoclaimed[1])
            if claims:
                return claims
        for level in LEVELS:
            reply: Any = await self.redis.xreadgroup(GROUP, worker, {self._stream(level): ">"}, count=1)
            if reply:
                return self._claims(level, reply[0][1])
        # Blocking on all levels at once may return one entry per level when several arrive together;
        # the caller releases the extras (`release_unstarted`), so it still runs one per free slot.
        streams: Any = {self._stream(level): ">" for level in LEVELS}
        reply = await self.redis.xreadgroup(GROUP, worker, streams, count=1, block=int(block_s * 1000))
        claims = []
        for stream, entries in reply or []:
            claims += self._claims(stream.decode().rsplit(":", 1)[1], entries)
        return sorted(claims, key=lambda c: LEVELS.index(c.level))

    @staticmethod
    def _claims(level: str, entries: list[Any]) -> list[Claim]:
        return [
            Claim(fields[b"job"].decode(), level, entry.decode())
            for entry, fields in entries
            if fields and b"job" in fields  # entries deleted while pending come back empty
        ]

    async def release_unstarted(self, worker: str, claim: Claim) -> None:
        """Hand back an entry this worker read but will not start: any worker's next sweep takes it."""
        await self.redis.xclaim(
            self._stream(claim.level), GROUP, worker, 0, [claim.entry], idle=_RELEASED_IDLE_MS, justid=True
        )

    async def start(self, worker: str, claim: Claim) -> Start:
        key = self._job(claim.job_id)
        keys = [key, f"{key}:cancel", f"{self.prefix}queued", self._stream(claim.level)]
        keys += [f"{key}:attempts", self.dead_letter_key(claim.job_id)]
        reply = await self._start(keys=keys, args=[worker, claim.entry])
        outcome = reply[0].decode()
        if outcome == "run":
            return Start("run", int(reply[1]), restore_pb2.RestoreJob.FromString(reply[2]))
        if outcome == "cancelled":
            return Start("cancelled", code=_code_name(reply[1]))
        if outcome == "exhausted":
            return Start("exhausted", attempt=int(reply[1]), failures=tuple(f.decode() for f in reply[2:]))
        return Start("skip")

    def dead_letter_key(self, job_id: str) -> str:
        """The dead-letter record of a job that used up its attempts (see the module's key list)."""
        return f"{self.prefix}dead:{job_id}"

    async def dead_letter(self, job_id: str) -> dict[str, str]:
        """The dead-letter record's fields but the job bytes (empty: none, or expired)."""
        record: Any = await self.redis.hgetall(self.dead_letter_key(job_id))
        return {k.decode(): v.decode() for k, v in record.items() if k != b"job"}

    async def publish(self, worker: str, job_id: str, event: restore_pb2.JobEvent) -> bool:
        """Append a non-terminal event; False if this worker no longer owns the job."""
        key = self._job(job_id)
        return bool(
            await self._progress(keys=[key, f"{key}:events"], args=[worker, event.SerializeToString()])
        )

    async def heartbeat(self, worker: str, claim: Claim) -> bool:
        """Reset the entry's idle time; False if the job is no longer this worker's (stop running it)."""
        keys = [self._job(claim.job_id), self._stream(claim.level)]
        return bool(await self._heartbeat(keys=keys, args=[worker, claim.entry]))

    async def finish(self, worker: str, claim: Claim, event: restore_pb2.JobEvent, state: str) -> bool:
        """Publish the terminal event, acknowledge the entry, start the result TTL. Fenced like publish."""
        key = self._job(claim.job_id)
        keys = [key, f"{key}:events", self._stream(claim.level), f"{key}:cancel", f"{key}:attempts"]
        args = [worker, claim.entry, event.SerializeToString(), state, self.prefix]
        return bool(await self._finish(keys=keys, args=args))

    async def release(self, worker: str, claim: Claim) -> bool:
        """Give a started job back to the queue (graceful shutdown); the attempt does not count."""
        key = self._job(claim.job_id)
        keys = [key, self._stream(claim.level), f"{self.prefix}queued", f"{key}:events"]
        return bool(await self._release(keys=keys, args=[worker, claim.entry, _RELEASED_IDLE_MS]))

    async def cancel_requested(self, job_id: str) -> str | None:
        """The status code name a cancel asked for, or None (the pub/sub backstop)."""
        code = await self.redis.get(f"{self._job(job_id)}:cancel")
        return None if code is None else _code_name(code)

    async def cancel_requests(self) -> AsyncIterator[tuple[str, str]]:
        """Cancel requests as they are published: (job id, status code name)."""
        async with self.redis.pubsub() as pubsub:
            await pubsub.subscribe(CANCEL_CHANNEL)
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    job_id, code = message["data"].decode().split()
                    yield job_id, _code_name(code)

    async def beat(self, worker: str) -> None:
        await self.redis.zadd(f"{self.prefix}workers", {worker: time.time()})

    async def leave(self, worker: str) -> None:
        await self.redis.zrem(f"{self.prefix}workers", worker)
