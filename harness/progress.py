"""What a run says while it runs: a live display in a terminal, one line per finished case run elsewhere.

In a CI log, under `nohup` or piped to a file, a live display prints nothing until the run ends (a 22-minute
run's whole log was one line, issue 19). There each finished case run gets one line instead: which run, its
status, its FPS, the time since the run started and an estimate of the time left.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.analysis import run_fps


class RunProgress(Protocol):
    """Told about each job as the runner starts and finishes it."""

    def started(self, name: str) -> Callable[[int, int], None]:
        """A job began; returns the callback for its iterations done out of total."""
        ...

    def finished(self, name: str, result: dict[str, Any]) -> None:
        """A job ended (ok, failed or skipped) with this run record."""
        ...


def run_progress(console: Console, jobs: int) -> LiveProgress | LineProgress:
    """The live display in a terminal, log lines otherwise. Use as a context manager."""
    return LiveProgress(console, jobs) if console.is_terminal else LineProgress(console, jobs)


class LiveProgress:
    """rich's progress bars: one for the whole run, one for the running job."""

    def __init__(self, console: Console, jobs: int) -> None:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        self.progress = Progress(*columns, console=console, transient=False)
        self.overall = self.progress.add_task("all runs", total=jobs)
        self.task: Any = None

    def __enter__(self) -> LiveProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def started(self, name: str) -> Callable[[int, int], None]:
        task = self.task = self.progress.add_task(name, total=None)
        return lambda done, total: self.progress.update(task, completed=done, total=total)

    def finished(self, name: str, result: dict[str, Any]) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        self.progress.advance(self.overall)


class LineProgress:
    """One plain line per finished job, for logs: `[3/40] case seed 0 rep 2: ok, 1,234 FPS · 0:42 elapsed, ~8:10 left`."""

    def __init__(self, console: Console, jobs: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.console, self.jobs, self.clock = console, jobs, clock
        self.began = clock()
        self.done = 0

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def started(self, name: str) -> Callable[[int, int], None]:
        return lambda done, total: None

    def finished(self, name: str, result: dict[str, Any]) -> None:
        self.done += 1
        elapsed = self.clock() - self.began
        left = self.jobs - self.done
        # The mean of the jobs so far: jobs differ (a 16-worker start, a convergence run), so it is a rough guide.
        eta = f"~{_clock(elapsed / self.done * left)} left" if left else "done"
        fps = run_fps(result)
        what = result.get("status", "error") + (f", {fps:,.0f} FPS" if fps is not None else "")
        self.console.print(f"[{self.done}/{self.jobs}] {name}: {what} · {_clock(elapsed)} elapsed, {eta}",
                           markup=False, highlight=False)  # fmt: skip


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
