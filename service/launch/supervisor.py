"""Keeps `make run`'s processes serving: restarts what crashed or hung, with backoff.

A background thread checks every `period_s`:

* **Triton**: the process is alive; `/v2/health/ready` answers within 1 s (a SIGSTOPped or wedged
  server does not: two misses in a row and it is killed and started again on the same ports, so the
  gateway keeps its URL); and each model answers a tiny inference every 2 s. Triton 2.51 keeps
  reporting a model ready after its Python-backend stub died (every call then fails), so a model
  whose probe fails is unloaded and loaded alone (explicit model control); if it still fails a
  probe after that, the whole server is restarted. A wrong answer is a fault at once; a probe that
  times out is one only when it does so twice in a row: a busy host (2 cores, a model's first
  inference after a restart) can be slow for a moment, and a reload that waits on a slow server
  (up to a minute) starts a chain of restarts and keeps the health checks waiting meanwhile.
* **Redis** (when the stack started it): alive, else started again on the same port and directory;
  the append-only file brings the jobs back.
* **the worker**: alive, else started again under the same name.

Each recovery waits out an exponential backoff (1 s, doubling to 30 s) that resets after a minute
of health, so a process that cannot stay up is not restarted in a tight loop. What happened is
printed, and counted in `events` (tests and the chaos benchmark read it).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from contract import MODELS, ModelSpec
from service.gateway.triton import probe_arrays
from service.launch.process import ManagedProcess
from service.launch.redis import RedisServer
from service.launch.triton import TritonServer

log = logging.getLogger("priorlab.supervisor")

PROBE_TIMEOUT_S = 2.0
HUNG_AFTER_MISSES = 2


def probe_inputs(spec: ModelSpec) -> list[httpclient.InferInput]:
    """The gateway's health probe (`probe_arrays`), as HTTP inputs."""
    inputs = []
    for name, array in probe_arrays(spec).items():
        item = httpclient.InferInput(name, list(array.shape), spec.input(name).dtype)
        item.set_data_from_numpy(array, binary_data=True)
        inputs.append(item)
    return inputs


@dataclass
class Backoff:
    first_s: float = 1.0
    max_s: float = 30.0
    reset_after_s: float = 60.0
    _delay_s: float = 0.0
    _last_failure: float = -1e9

    def wait(self, stop: threading.Event) -> bool:
        """Sleeps before the next recovery; False when the supervisor is being stopped."""
        now = time.monotonic()
        if now - self._last_failure > self.reset_after_s:
            self._delay_s = 0.0
        self._last_failure = now
        delay, self._delay_s = self._delay_s, min(self.max_s, max(self.first_s, self._delay_s * 2))
        return not stop.wait(delay)


@dataclass
class Supervisor:
    triton: TritonServer
    redis: RedisServer | None
    worker: ManagedProcess
    start_worker: Callable[[], ManagedProcess]
    period_s: float = 0.5
    probe_every_s: float = 2.0  # model probes (a few ms each); the gateway's health sees faster
    events: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _misses: int = 0
    _backoff: dict[str, Backoff] = field(default_factory=dict)
    _probed: dict[str, float] = field(default_factory=dict)
    _slow: dict[str, int] = field(default_factory=dict)  # probes timed out in a row, per model

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops checking (before the stack stops the processes it watches)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        client = httpclient.InferenceServerClient(
            f"127.0.0.1:{self.triton.http_port}", network_timeout=PROBE_TIMEOUT_S, connection_timeout=1.0
        )
        try:
            while not self._stop.wait(self.period_s):
                try:
                    self._check(client)
                except Exception:  # a supervisor that dies silently supervises nothing
                    log.exception("supervisor check failed; checking again")
        finally:
            client.close()

    def _check(self, client: httpclient.InferenceServerClient) -> None:
        if not self.triton.handle.running():
            status = self.triton.handle.process.returncode
            self._recover("Triton", f"exited with status {status}", self._restart_triton)
            return
        if not self.triton.is_ready():
            self._misses += 1
            if self._misses >= HUNG_AFTER_MISSES:
                self._recover("Triton", f"did not answer {self._misses} health checks", self._restart_triton)
            return
        self._misses = 0
        for spec in MODELS.values():
            reason = self._probe(client, spec)
            if reason is not None:
                self._recover(f"model {spec.name}", reason, functools.partial(self._reload, client, spec))
        if self.redis is not None and not self.redis.handle.running():
            self._recover("Redis", "exited", self.redis.restart)
        if not self.worker.running():
            status = self.worker.process.returncode
            self._recover("Restore worker", f"exited with status {status}", self._restart_worker)

    def _probe(self, client: httpclient.InferenceServerClient, spec: ModelSpec) -> str | None:
        """Why `spec` cannot serve, or None; at most once per `probe_every_s` per model."""
        now = time.monotonic()
        if now - self._probed.get(spec.name, -1e9) < self.probe_every_s:
            return None
        self._probed[spec.name] = now
        try:
            client.infer(spec.name, probe_inputs(spec), timeout=int(PROBE_TIMEOUT_S * 1e6))
        except InferenceServerException as e:
            message = e.message() or ""
            slow = "timeout" in message.lower()
            return self._failed(spec, f"a probe inference failed: {message}", slow=slow)
        except OSError as e:
            return self._failed(spec, f"a probe inference failed: {e}", slow=isinstance(e, TimeoutError))
        self._slow.pop(spec.name, None)
        return None

    def _failed(self, spec: ModelSpec, reason: str, *, slow: bool) -> str | None:
        """`reason` when the failure is a fault; a timeout only on the HUNG_AFTER_MISSES-th in a row."""
        if not slow:
            self._slow.pop(spec.name, None)
            return reason
        misses = self._slow[spec.name] = self._slow.get(spec.name, 0) + 1
        if misses < HUNG_AFTER_MISSES:
            log.info("model %s %s: probing again before acting", spec.name, reason)
            return None
        del self._slow[spec.name]
        return f"{reason} ({misses} in a row)"

    def _recover(self, what: str, reason: str, action: Callable[[], None]) -> None:
        if not self._backoff.setdefault(what, Backoff()).wait(self._stop):
            return
        event = f"{what} {reason}: restarting"
        log.warning(event)
        print(f"supervisor: {event}", flush=True)
        started = time.monotonic()
        action()
        done = f"{what} back in {time.monotonic() - started:.1f} s"
        print(f"supervisor: {done}", flush=True)
        self.events.append(f"{event}; {done}")

    def _restart_triton(self) -> None:
        self._misses = 0
        self._slow.clear()
        self.triton.restart()

    def _reload(self, client: httpclient.InferenceServerClient, spec: ModelSpec) -> None:
        """Reloads one model; if it still cannot answer a probe, restarts the whole server."""
        try:
            self.triton.reload_model(spec.name)
        except OSError as e:
            log.warning("reloading %s failed (%s): restarting Triton", spec.name, e)
            self._restart_triton()
            return
        self._probed.pop(spec.name, None)
        reason = self._probe(client, spec)
        if reason is not None:
            log.warning("%s still failing after a reload (%s): restarting Triton", spec.name, reason)
            self._restart_triton()

    def _restart_worker(self) -> None:
        self.worker.stop(1.0)  # sweeps what is left of its group
        self.worker = self.start_worker()
