"""backends/processes.py: the one terminate-then-kill helper (issue 20), on real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from backends import processes

IGNORES_SIGTERM = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "


def _sleeper(prelude: str = "") -> subprocess.Popen:
    """A child that sleeps for a minute once it has said it is ready (its SIGTERM handler, if any, in place)."""
    proc = subprocess.Popen([sys.executable, "-c", prelude + "import time; print('ready', flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_stop_terminates_first_and_leaves_the_exit_status_to_the_parent():
    proc = _sleeper()
    with proc:
        assert processes.stop([psutil.Process(proc.pid)], grace_s=30) == []
        # Not reaped by `stop`: Popen still learns how its child ended (a reaped child would read as exit code 0).
        assert proc.wait(timeout=5) == -signal.SIGTERM


def test_stop_kills_what_outlives_its_grace_period():
    proc = _sleeper(IGNORES_SIGTERM)
    with proc:
        started = time.monotonic()
        assert processes.stop([psutil.Process(proc.pid)], grace_s=0.5) == []
        assert time.monotonic() - started >= 0.5
        assert proc.wait(timeout=5) == -signal.SIGKILL


def test_without_terminate_no_sigterm_is_sent_and_no_grace_means_at_once():
    proc = _sleeper()  # SIGTERM would end it: the exit status shows which signal did
    with proc:
        started = time.monotonic()
        assert processes.stop([psutil.Process(proc.pid)], grace_s=0.5, terminate=False) == []  # asked another way
        assert time.monotonic() - started >= 0.5
        assert proc.wait(timeout=5) == -signal.SIGKILL
    proc = _sleeper(IGNORES_SIGTERM)
    with proc:
        started = time.monotonic()
        assert processes.stop([psutil.Process(proc.pid)], grace_s=0, terminate=False) == []  # must die at once
        assert time.monotonic() - started < 5
        assert proc.wait(timeout=5) == -signal.SIGKILL


def test_a_process_found_by_a_predicate_is_stopped_and_running_says_so():
    proc = _sleeper()
    with proc:
        assert processes.running(proc.pid)
        found = processes.find(lambda p: p.pid == proc.pid)
        assert [p.pid for p in found] == [proc.pid] and proc.pid in {p.pid for p in processes.descendants()}
        processes.stop(found, grace_s=30)
        assert not processes.running(proc.pid)  # exited, not yet reaped: a zombie counts as stopped
        proc.wait(timeout=5)
    assert os.getpid() not in {p.pid for p in processes.find(lambda p: True)}  # never the caller itself


def test_existing_skips_a_pid_that_is_gone():
    """A forkserver's worker is reaped by the server, not by us: its pid can vanish between two calls."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: the pid names no process now
    found = processes.existing([os.getpid(), gone.pid])
    assert [p.pid for p in found] == [os.getpid()]
