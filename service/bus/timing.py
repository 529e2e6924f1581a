"""The timing contract between the processes on the Restore job bus: derived from one number, here.

Three periods depend on each other across processes, so they are all derived from the visibility timeout
and nothing else:

* `visibility_timeout_s` (worker `--visibility-timeout`, gateway `PRIORLAB_RESTORE_VISIBILITY_TIMEOUT_S`;
  default 30 s): a running job whose worker has not heartbeat for this long is claimed by another worker
  and started again. Every worker and gateway of one deployment must be given the same value.
* `heartbeat_s` = visibility / 5 (6 s): how often a worker beats (the `workers` zset) and resets the idle
  time of each job it runs. Five beats per visibility timeout, so a live worker whose beats are slow
  (a Redis hiccup, a long GC pause) loses no job to a retry.
* `worker_ttl_s` = 3 beats (18 s): a worker that has not beaten for this long is gone. The gateway's
  Restorer health is SERVING while a beat is younger than this; a worker's own `/healthz` fails when
  Redis has not answered it for this long. Three beats, so a live worker may miss two in a row and still
  count, and fewer than five, so a dead worker is reported gone before its job is retried elsewhere.

The test (`tests/service/bus/test_timing.py`) checks these orderings for any visibility timeout, and
against Redis: a worker beating on time is never reported gone, one that stops is reported within the TTL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_VISIBILITY_TIMEOUT_S = 30.0
BEATS_PER_VISIBILITY = 5
MISSED_BEATS = 3  # beats without which a worker is gone: more than one slow beat, less than a retry


@dataclass(frozen=True)
class BusTiming:
    """The visibility timeout of a deployment and the periods derived from it (see the module)."""

    visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S

    def __post_init__(self) -> None:
        if not (math.isfinite(self.visibility_timeout_s) and self.visibility_timeout_s > 0):
            seconds = self.visibility_timeout_s
            raise ValueError(f"the visibility timeout must be a positive number of seconds, got {seconds}")

    @property
    def heartbeat_s(self) -> float:
        """How often a worker beats and resets the idle time of its running jobs."""
        return self.visibility_timeout_s / BEATS_PER_VISIBILITY

    @property
    def worker_ttl_s(self) -> float:
        """How long after its last beat a worker counts as gone."""
        return MISSED_BEATS * self.heartbeat_s
