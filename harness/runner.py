"""Runs a suite: every repeat of every case in a fresh process, results saved as they finish.

Whatever stops a run — Ctrl-C, SIGTERM (`timeout`, `docker stop`, CI), SIGHUP (a closed terminal) —
stops it the same way: the running case is asked to close its backend, then its whole process tree is
killed, its scratch folder (every temp dir its processes made: Ray's session, tokens) and shared-memory
segments are removed, the run is marked `interrupted`, and `report.md` is written for what finished.
`--resume RUN_DIR` finishes the runs that are not `ok` in the same folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

from backends import processes
from backends.host import short_temp_root
from backends.processes import DEFAULT_SHM_PREFIX, SHM_DIR, SHM_PREFIX_ENV
from harness.case import PROGRESS_PREFIX
from harness.errors import HarnessError
from harness.machine import commit_info
from harness.progress import run_progress
from harness.results import load_run, new_run, new_run_dir, save_run
from harness.suite import CaseConfig, MeasureConfig, Suite, to_json

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
CLOSE_GRACE_S = 20.0
"""How long a stopped case may take to close its backend (Ray shutdown, workers joined) before SIGKILL."""
SCRATCH_ENV = "PPO_HARNESS_SCRATCH"
"""A case process's own temp folder (also its TMPDIR): removed by the runner whatever happened."""


class StopRequested(BaseException):
    """A signal asked the run to stop; like KeyboardInterrupt, not an error of the run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise `StopRequested` once; later ones are ignored while we clean up."""
    fired: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if not fired:
            fired.append(signum)
            raise StopRequested(signum)

    if threading.current_thread() is not threading.main_thread():  # signals reach only the main thread
        yield
        return
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclass(frozen=True)
class Job:
    """One fresh-process run: a case, a seed, a repeat number."""

    case_index: int
    case: CaseConfig
    measure: MeasureConfig
    seed: int
    repeat: int


def plan_jobs(suite: Suite) -> list[Job]:
    """Throughput repeats are interleaved across cases (all cases' repeat 0, then repeat 1, ...)
    so that a slow spell on a shared machine spreads over every case instead of sinking one."""
    rounds: list[list[Job]] = []
    index = 0
    for part in suite.parts:
        for case in part.cases:
            m = part.measure
            runs = (
                [(s, r) for r, s in enumerate(m.seeds)]
                if m.mode == "convergence"
                else [(m.seeds[0], r) for r in range(m.repeats)]
            )
            for round_no, (seed, repeat) in enumerate(runs):
                while len(rounds) <= round_no:
                    rounds.append([])
                rounds[round_no].append(Job(index, case, m, seed, repeat))
            index += 1
    return [job for round_jobs in rounds for job in round_jobs]


def run_suite(
    suite: Suite,
    out: Path,
    quick: bool,
    command: list[str],
    case_timeout_s: float,
    console: Console,
    resume: Path | None = None,
    force: bool = False,
    deadline: float | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run every job (or, with `resume`, every job of that run not yet `ok`); returns the run folder and
    the final record. Never loses a finished case; a signal ends the run `interrupted`. With a `deadline`
    (`time.monotonic()`), the run ends there: the case running then is stopped, the rest are recorded as not run."""
    if resume is not None:
        run_dir, run = _resumable(resume, suite, force, console)
        quick = run["quick"]
        suite = suite.quick() if quick else suite
    else:
        cuts = suite.quick_cuts() if quick else ()
        suite = suite.quick() if quick else suite
        run_dir = new_run_dir(out, suite.name)
        run = new_run(suite, quick, command)
        if quick:
            run["quick_cuts"] = list(cuts)
        _save(run_dir, run)
    jobs = [job for job in plan_jobs(suite) if not _finished(run, job)]
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    first_log = 1 + max((int(p.name[:3]) for p in logs.glob("[0-9][0-9][0-9].log")), default=0)
    what = f"resuming {len(jobs)} unfinished runs" if resume else f"{len(jobs)} runs of {len(suite.cases)} cases"
    console.print(f"[bold]{suite.name}[/]: {what} -> {run_dir}")
    broken: dict[int, str] = {}  # case index -> the error that will recur in every repeat
    try:
        with stop_on_signals(), run_progress(console, len(jobs)) as progress:
            for number, job in enumerate(jobs, start=first_log):
                name = f"{job.case.id} seed {job.seed} rep {job.repeat}"
                if job.case_index in broken:
                    result = _skipped(job, broken[job.case_index])
                elif deadline is not None and time.monotonic() >= deadline:
                    result = _not_run(job, "the time budget ran out")
                else:
                    on_progress = progress.started(name)
                    left = None if deadline is None else max(1.0, deadline - time.monotonic())
                    timeout = case_timeout_s if left is None else min(case_timeout_s, left)
                    result = _run_job(job, run_dir, logs / f"{number:03d}.log", timeout, on_progress)
                    if left is not None and timeout == left and str(result.get("error", "")).startswith("timed out"):
                        result["error"] = f"stopped after {left:.0f} s: the time budget ran out"
                    if result.get("deterministic"):
                        broken[job.case_index] = result["error"]
                if resume is not None:
                    result["resumed"] = True
                _record(run, job, result)
                _save(run_dir, run)
                progress.finished(name, result)
                if result["status"] == "error":
                    console.print(f"[red]failed[/] {name}: {result.get('error')} (log: {result.get('log')})")
        run["status"] = "complete"
    except StopRequested as stop:
        run["status"] = "interrupted"
        run["stopped_by"] = signal.Signals(stop.signum).name
        console.print(f"[yellow]interrupted[/] by {run['stopped_by']}: finished runs are saved; "
                      f"`python -m harness run {suite.path} --resume {run_dir}` finishes the rest")  # fmt: skip
    finally:
        run["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        _save(run_dir, run)
    return run_dir, run


def _save(run_dir: Path, run: dict[str, Any]) -> None:
    """save_run, with a full disk (or any write failure) ending the run in one line, the last good file kept."""
    try:
        save_run(run_dir, run)
    except OSError as exc:
        with contextlib.suppress(OSError):
            (run_dir / "run.json.tmp").unlink()
        raise HarnessError(
            f"cannot write {run_dir / 'run.json'}: {exc.strerror or exc}; the last complete run.json is kept "
            f"(free some space, then `--resume {run_dir}` finishes the run)"
        ) from None


def _finished(run: dict[str, Any], job: Job) -> bool:
    return any(
        r.get("status") == "ok" and r.get("seed") == job.seed and r.get("repeat") == job.repeat
        for r in run["cases"][job.case_index]["runs"]
    )


def _record(run: dict[str, Any], job: Job, result: dict[str, Any]) -> None:
    """Add the result, replacing an unfinished attempt of the same seed and repeat (a resumed run)."""
    runs = run["cases"][job.case_index]["runs"]
    runs[:] = [r for r in runs if (r.get("seed"), r.get("repeat")) != (job.seed, job.repeat)] + [result]


def _not_run(job: Job, why: str) -> dict[str, Any]:
    return {"seed": job.seed, "repeat": job.repeat, "status": "error", "log": "", "error": f"not run: {why}"}


def _skipped(job: Job, error: str) -> dict[str, Any]:
    return _not_run(job, f"an earlier run of this case failed in a way every run would ({error})")


def _resumable(run_dir: Path, suite: Suite, force: bool, console: Console) -> tuple[Path, dict[str, Any]]:
    """The run to finish: same suite, same code (or --force), its leftovers cleaned up."""
    run = load_run(run_dir)
    if "migrated_from" in run:
        # Its code is gone, and saving would write today's layout over the old file: nothing to finish it with.
        raise HarnessError(f"cannot resume {run_dir}: it has results schema version {run['migrated_from']}, written by "
                           "older code; rerun the suite from scratch (even --force cannot mix the two)")  # fmt: skip
    run_dir = Path(run_dir)
    if run_dir.is_file():
        run_dir = run_dir.parent
    planned = [to_json(c) for c in (suite.quick() if run["quick"] else suite).cases]
    recorded = [{k: v for k, v in c.items() if k != "runs"} for c in run["cases"]]
    problems = []
    if run["suite"]["sha256"] != suite.sha256:
        problems.append(
            f"the suite file changed since the run (sha256 {run['suite']['sha256'][:12]} then, {suite.sha256[:12]} now)"
        )
    elif planned != recorded:
        problems.append("the suite's cases differ from the run's (an included file changed?)")
    commit = commit_info()
    if run["commit"].get("id") != commit.get("id") or commit.get("dirty"):
        then, now = run["commit"].get("id") or "unknown", commit.get("id") or "unknown"
        problems.append(
            f"the code changed (commit {then[:12]} then, {now[:12]}{' with changes' if commit.get('dirty') else ''} now)"
        )
    if problems and not force:
        raise HarnessError(f"cannot resume {run_dir}: {'; '.join(problems)}; rerun from scratch, or pass --force to mix them")
    if problems:
        console.print(f"[yellow]warning[/]: resuming anyway (--force): {'; '.join(problems)}")
        run.setdefault("resume_warnings", []).extend(problems)
    if planned != recorded:
        raise HarnessError(f"cannot resume {run_dir}: its cases are not this suite's, even with --force; pass the suite it ran")
    for leftover in sorted((run_dir / "logs").glob("*.scratch")):  # the harness itself was killed mid-case
        _clean_scratch(Path(leftover.read_text().strip()))
        leftover.unlink()
    run["status"] = "running"
    run.setdefault("resumed", []).append(dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    return run_dir, run


CASE_ENTRY = "import sys; from harness.case import main; sys.exit(main(sys.argv[1:]))"
"""What a case process runs (`python -c CASE_ENTRY SPEC.json RESULT.json`)."""


def _run_job(job: Job, run_dir: Path, log_path: Path, timeout_s: float, on_progress: Any) -> dict[str, Any]:
    spec_path = log_path.with_suffix(".spec.json")
    result_path = log_path.with_suffix(".result.json")
    spec = {"case": to_json(job.case), "measure": to_json(job.measure), "seed": job.seed}  # harness.case reads it
    spec_path.write_text(json.dumps(spec))
    # `-c`, not `-m harness.case`: a multiprocessing worker (forkserver or spawn) re-imports its parent's
    # main module, and harness.case would bring the whole harness into every worker (issue 13).
    command = [sys.executable, "-c", CASE_ENTRY, str(spec_path), str(result_path)]
    scratch = Path(tempfile.mkdtemp(prefix="ph", dir=short_temp_root()))  # short: Ray's sockets live in it
    marker = log_path.with_suffix(".scratch")  # found by --resume if the harness itself is killed
    marker.write_text(str(scratch))
    env = os.environ | {"PYTHONUNBUFFERED": "1", "TMPDIR": str(scratch), SCRATCH_ENV: str(scratch),
                        SHM_PREFIX_ENV: _shm_prefix(scratch)}  # fmt: skip
    try:
        with open(log_path, "w") as log:
            # Own session: the case's whole tree (workers, embedded Ray) can be found and stopped together.
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env, start_new_session=True)
            try:
                timed_out = _follow(proc, timeout_s, on_progress, log)
            finally:
                _stop_case(proc)
                _clean_scratch(scratch, env[SHM_PREFIX_ENV])
                marker.unlink(missing_ok=True)
    finally:
        spec_path.unlink(missing_ok=True)
    result: dict[str, Any] = {"seed": job.seed, "repeat": job.repeat, "status": "error",
                              "log": str(log_path.relative_to(run_dir))}  # fmt: skip
    if result_path.exists():
        with contextlib.suppress(OSError, ValueError):  # killed mid-write: what it had is lost with the file
            result |= json.loads(result_path.read_text()) | {"repeat": job.repeat}
        result_path.unlink()
        result_path.with_suffix(".tmp").unlink(missing_ok=True)
    if timed_out:
        result |= {"status": "error", "error": f"timed out after {timeout_s:.0f} s (raise --case-timeout)"}
    elif result["status"] != "ok" and "error" not in result:  # it died without a word: a signal, an exit
        how = (
            f"was killed by {signal.Signals(-proc.returncode).name}"
            if proc.returncode < 0
            else f"exited with code {proc.returncode}"
        )
        done = len(result.get("iterations", []))
        result |= {"status": "error", "error": f"case process {how} after {done} iteration(s) (out of memory? see the log)"}
    return result


def _follow(proc: subprocess.Popen, timeout_s: float, on_progress: Any, log: Any) -> bool:
    """Relay progress lines until the process ends; True if it had to be stopped for time."""
    killed = threading.Event()

    def on_timeout() -> None:
        killed.set()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # the case closes its backend; _stop_case finishes the job

    timer = threading.Timer(timeout_s, on_timeout)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(PROGRESS_PREFIX):
                done, total = line.split()[1:3]
                on_progress(int(done), int(total))
            else:
                log.write(line)
        proc.wait()
    finally:
        timer.cancel()
    return killed.is_set()


def _stop_case(proc: subprocess.Popen) -> None:
    """Ask the case process to stop (it closes its backend: workers, Ray), then kill whatever of its tree is
    left. Only the leader gets SIGTERM first: signalling the group would kill Ray's own processes under the
    driver before it can shut them down."""
    if proc.poll() is not None and not processes.session_members(proc.pid):
        return
    tree = processes.descendants(proc.pid)  # found now: once the leader exits, its children are reparented
    # Not reaped by `stop`: `proc.wait` below collects the leader's exit status (a kill is reported as one).
    leader = [psutil.Process(proc.pid)] if proc.poll() is None else []
    processes.stop(leader, CLOSE_GRACE_S)
    processes.stop(tree + processes.session_members(proc.pid), 0, terminate=False)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group's last members, if one escaped both lists
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _shm_prefix(scratch: Path) -> str:
    """The case's segment prefix: ours (the tests' session's, say) extended by this runner and the case's scratch."""
    return f"{os.environ.get(SHM_PREFIX_ENV, DEFAULT_SHM_PREFIX)}{os.getpid()}_{scratch.name}_"


def _clean_scratch(scratch: Path, shm_prefix: str | None = None) -> None:
    """Remove a case's temp folder and its shared-memory segments; kill any process still using the folder."""
    processes.stop(processes.find(lambda p: p.environ().get(SCRATCH_ENV) == str(scratch)), 0, terminate=False)
    shutil.rmtree(scratch, ignore_errors=True)
    for segment in SHM_DIR.glob("*"):
        # --resume knows the scratch folder but not the pid of the runner that was killed
        if segment.name.startswith(shm_prefix) if shm_prefix else f"_{scratch.name}_" in segment.name:
            segment.unlink(missing_ok=True)
