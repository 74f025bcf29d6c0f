"""Deadlines inside a case process: a hung env, worker or learner fails the case, in every backend.

The process backends time out their own waits on workers; a hang in the learner's process (an in-process
backend's env, a learner, an evaluation) has nothing to time it out. The watchdog is a thread: each phase
arms it with a deadline, and when one passes it sends this process SIGTERM, which `harness.case` turns
into an exception in the main thread, so the backend is still closed and the error recorded. If the main
thread cannot take the signal (stuck in C code), the process exits after a grace period with the result
it has.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

GRACE_S = 15.0
BASE_S = 120.0
"""Every deadline's floor: start-up transients, first-call compilation, a loaded machine. As long as the
process backends' own wait on a worker (backends/remote.py), whose message names the worker."""
STARTUP_S = 300.0
"""Launching workers (16 Ray actors take about 25 s on 2 cores) and building the learner."""
RESTART_STARTUP_S = 30.0
"""Replacing one lost worker (a new process or Ray actor) and sampling its share again."""
EPISODE_STEPS = 1000
"""Steps an evaluation episode is budgeted (Pendulum's are 200)."""
SECONDS_PER_STEP = 0.01
"""About 100x a Pendulum step with a policy call on this 2-core machine: a margin, not an estimate."""


def default_deadline(steps: int, step_cost_ms: float, workers: int = 1) -> float:
    """Seconds one phase of `steps` env steps may take before it counts as hung: generous, scaled to the
    budget and any synthetic step cost (serial: every step in turn; workers share the steps)."""
    per_step = SECONDS_PER_STEP + step_cost_ms / 1000
    return BASE_S + steps * per_step / max(1, min(workers, steps))


class Watchdog:
    """`with watchdog.phase("iteration 3", seconds):` fails the phase if it outlives `seconds`."""

    def __init__(self, on_expire: Callable[[str], None]) -> None:
        self._lock = threading.Lock()
        self._deadline: float | None = None
        self._what = ""
        self._seconds = 0.0
        self.expired: str | None = None
        """The phase that outlived its deadline, once one has."""
        self.expired_after = 0.0
        self._on_expire = on_expire
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self._thread.start()

    def phase(self, what: str, seconds: float) -> _Phase:
        return _Phase(self, what, seconds)

    def close(self) -> None:
        self._stop.set()

    def _arm(self, what: str, seconds: float) -> None:
        with self._lock:
            self._what, self._seconds, self._deadline = what, seconds, time.monotonic() + seconds

    def _disarm(self) -> None:
        with self._lock:
            self._deadline = None

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                late = self._deadline is not None and time.monotonic() > self._deadline
                what, seconds = self._what, self._seconds
            if late and self.expired is None:
                self.expired, self.expired_after = what, seconds
                os.kill(os.getpid(), signal.SIGTERM)  # the main thread raises, closes the backend, records it
                if self._stop.wait(GRACE_S):
                    return
                self._on_expire(what)  # the main thread never took the signal
                os._exit(3)


class _Phase:
    def __init__(self, watchdog: Watchdog, what: str, seconds: float) -> None:
        self.watchdog, self.what, self.seconds = watchdog, what, seconds

    def __enter__(self) -> None:
        self.watchdog._arm(self.what, self.seconds)

    def __exit__(self, *exc: object) -> None:
        self.watchdog._disarm()
