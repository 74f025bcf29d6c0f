"""Runs a suite: every repeat of every case in a fresh process, results saved as they finish."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.case import PROGRESS_PREFIX
from harness.results import new_run, new_run_dir, save_run
from harness.suite import CaseConfig, MeasureConfig, Suite, to_json


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
    suite: Suite, out: Path, quick: bool, command: list[str], case_timeout_s: float, console: Console
) -> tuple[Path, dict[str, Any]]:
    """Run every job; returns the run folder and the final record. Never loses a finished case."""
    if quick:
        suite = suite.quick()
    run_dir = new_run_dir(out, suite.name)
    run = new_run(suite, quick, command)
    save_run(run_dir, run)
    jobs = plan_jobs(suite)
    console.print(f"[bold]{suite.name}[/]: {len(jobs)} runs of {len(suite.cases)} cases -> {run_dir}")
    logs = run_dir / "logs"
    logs.mkdir()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            overall = progress.add_task("all runs", total=len(jobs))
            for number, job in enumerate(jobs, start=1):
                name = f"{job.case.id} seed {job.seed} rep {job.repeat}"
                task = progress.add_task(name, total=None)
                result = _run_job(
                    job,
                    run_dir,
                    logs / f"{number:03d}.log",
                    case_timeout_s,
                    lambda d, t, task=task: progress.update(task, completed=d, total=t),
                )
                run["cases"][job.case_index]["runs"].append(result)
                save_run(run_dir, run)
                progress.remove_task(task)
                progress.advance(overall)
                if result["status"] != "ok":
                    console.print(f"[red]failed[/] {name}: {result.get('error')} (log: {result.get('log')})")
        run["status"] = "complete"
    except KeyboardInterrupt:
        run["status"] = "interrupted"
        console.print("[yellow]interrupted[/]: finished runs are saved")
    finally:
        run["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        save_run(run_dir, run)
    return run_dir, run


def _run_job(job: Job, run_dir: Path, log_path: Path, timeout_s: float, on_progress: Any) -> dict[str, Any]:
    spec_path = log_path.with_suffix(".spec.json")
    result_path = log_path.with_suffix(".result.json")
    spec = {"case": to_json(job.case), "measure": to_json(job.measure), "seed": job.seed}  # harness.case reads it
    spec_path.write_text(json.dumps(spec))
    command = [sys.executable, "-m", "harness.case", str(spec_path), str(result_path)]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        # Own session: on a time-out the whole tree (workers, embedded Ray) goes with it.
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env, start_new_session=True)
        timed_out = _follow(proc, timeout_s, on_progress, log)
    result: dict[str, Any] = {
        "seed": job.seed,
        "repeat": job.repeat,
        "status": "error",
        "log": str(log_path.relative_to(run_dir)),
    }
    if result_path.exists():
        result |= json.loads(result_path.read_text()) | {"repeat": job.repeat}
        result_path.unlink()
    spec_path.unlink()
    if timed_out:
        result |= {"status": "error", "error": f"timed out after {timeout_s:.0f} s (raise --case-timeout)"}
    elif proc.returncode != 0 and result["status"] != "error":
        result |= {"status": "error", "error": f"case process exited with code {proc.returncode}"}
    elif result["status"] == "running":
        result |= {"status": "error", "error": f"case process ended early with code {proc.returncode}"}
    return result


def _follow(proc: subprocess.Popen, timeout_s: float, on_progress: Any, log: Any) -> bool:
    """Relay progress lines until the process ends; True if it had to be killed for time."""
    killed = threading.Event()

    def on_timeout() -> None:
        killed.set()
        _kill_tree(proc)

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
    except KeyboardInterrupt:
        _kill_tree(proc)
        raise
    finally:
        timer.cancel()
    return killed.is_set()


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGTERM the case's process group (it closes its backend), then SIGKILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
