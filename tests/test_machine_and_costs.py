"""What a reader needs to judge a number: a busy env cost that really burns CPU, oversubscription counted
against the CPUs a run may use, a dirty flag that means changed code, and the load seen during the runs."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from backends.envs import EnvSpec, make_env
from harness.analysis import case_stats
from harness.machine import busy_cores_between, busy_cores_elsewhere, commit_info, usable_cpus
from harness.report import machine_header

COST_MS, STEPS = 20.0, 5


def _cpu_seconds_of_steps(results: list[float]) -> None:
    env = make_env(EnvSpec(step_cost_ms=COST_MS, step_cost_kind="busy"))
    env.reset(seed=0)
    started = time.thread_time()
    for _ in range(STEPS):
        env.step(np.zeros(1, np.float32))
    results.append(time.thread_time() - started)
    env.close()


def test_busy_cost_burns_its_cpu_even_when_descheduled():
    """Two threads share one interpreter lock: a wall-clock deadline would let each burn about half its CPU."""
    results: list[float] = []
    threads = [threading.Thread(target=_cpu_seconds_of_steps, args=(results,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    asked = STEPS * COST_MS / 1000
    assert len(results) == 2 and all(r >= 0.95 * asked for r in results), (results, asked)


def _case(kind: str, workers: int) -> dict:
    return {
        "id": "p/c", "part": "p", "label": "c", "runs": [],
        "backend": {"name": "ray_local", "workers": workers, "envs_per_worker": 1, "inference": "worker", "options": {}},
        "env": {"id": "Pendulum-v1", "kwargs": {}, "step_cost_ms": 1.0, "step_cost_kind": kind},
        "hyperparameters": {}, "preset": "report",
    }  # fmt: skip


def test_sleeping_workers_are_not_cpu_contention():
    part = {"measure": {"mode": "throughput"}}
    assert not case_stats(_case("sleep", 16), part, cpus=2).oversubscribed
    assert case_stats(_case("busy", 16), part, cpus=2).oversubscribed
    assert not case_stats(_case("busy", 2), part, cpus=2).oversubscribed


def test_env_processes_and_env_threads_of_an_in_process_tool_count_as_busy():
    """gymnasium's AsyncVectorEnv and SB3's SubprocVecEnv run an env per process (their placement lists them);
    EnvPool steps envs on `num_threads` threads of the learner's process."""
    part = {"measure": {"mode": "throughput"}}
    env_processes = [{"pid": 100 + i} for i in range(8)]

    def tool(kind: str, options: dict, placement: list) -> dict:
        case = _case(kind, 1) | {"runs": [{"status": "ok", "backend": {"placement": placement},
                                           "iterations": [{"warmup": False, "steps": 1, "total_s": 1.0}]}]}  # fmt: skip
        case["backend"] = case["backend"] | {"name": "vecenv", "envs_per_worker": 8, "inference": "central", "options": options}
        return case

    busy = case_stats(tool("busy", {}, env_processes), part, cpus=2)
    assert busy.oversubscribed and busy.busy_per_host["learner host"] == (9, 2)  # 8 env processes + the learner
    assert not case_stats(tool("sleep", {}, env_processes), part, cpus=2).oversubscribed
    assert case_stats(tool("busy", {"num_threads": 4}, []), part, cpus=2).busy_per_host["learner host"] == (4, 2)
    assert not case_stats(tool("busy", {}, []), part, cpus=2).oversubscribed  # vecenv: the learner alone


def test_usable_cpus_is_the_affinity_mask_at_most():
    import os

    assert 0 < usable_cpus() <= len(os.sched_getaffinity(0))


def test_dirty_means_changed_tracked_files_not_untracked_ones(tmp_path):
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.txt").write_text("one")
    git("add", "a.txt")
    git("commit", "-qm", "a")
    (tmp_path / ".venv").write_text("tox droppings")
    assert commit_info(tmp_path)["dirty"] is False
    (tmp_path / "a.txt").write_text("two")
    info = commit_info(tmp_path)
    assert info["dirty"] is True and info["changed_files"] == ["a.txt"]


def test_header_shows_the_load_during_the_runs_and_the_changed_files():
    run = {
        "machine": {"cpu_model": "X", "physical_cores": 2, "logical_cores": 2, "usable_cpus": 1.5, "memory_gib": 24,
                    "load_average": [0.5, 0.4, 0.3], "python": "3.11"},
        "packages": {}, "suite": {"path": "s.toml", "sha256": "0" * 64}, "created": "t", "status": "complete",
        "commit": {"id": "abc", "dirty": True, "changed_files": ["harness/report.py"]},
        "cases": [{"runs": [{"resources": {"load_1min": {"mean": 1.2, "max": 3.4}}}, {"resources": {"load_1min": {"mean": 0.9, "max": 1.1}}}]}],
    }  # fmt: skip
    text = "\n".join(machine_header(run))
    assert "1-minute load 0.90–3.40 during the runs" in text
    assert "(1.5 usable by this run)" in text and "uncommitted changes to harness/report.py" in text


def test_a_case_records_each_workers_pss_and_the_trees():
    """A real multiprocessing case: the learner and both workers have a PSS peak, and the tree holds at least them."""
    from algorithms.config import PPOConfig
    from backends.base import BackendSpec
    from backends.envs import EnvSpec
    from harness.case import CaseRun
    from harness.suite import CaseConfig, MeasureConfig

    case = CaseConfig("m/mp", "m", "mp", BackendSpec("multiprocessing", 2, 1, options={"timeout_s": 60}), EnvSpec(),
                      dataclasses.asdict(PPOConfig(steps_per_iteration=64, epochs=1, hidden_sizes=(16, 16))), "report")  # fmt: skip
    result = CaseRun(case, MeasureConfig(warmup_iterations=0, iterations=2, repeats=1), seed=0).run()
    memory = result["memory"]
    assert memory["learner_pss_mib"] > 0 and len(memory["workers_pss_mib"]) == 2
    assert all(0 < worker < memory["learner_pss_mib"] for worker in memory["workers_pss_mib"])  # no torch in a worker
    assert memory["tree_pss_mib"] >= memory["learner_pss_mib"] + sum(memory["workers_pss_mib"]) * 0.9


def test_the_case_runs_with_the_torch_threads_run_json_records():
    """The thread count in run.json is the one the case's process really trains with: a case that recorded
    `[measure] torch_threads` without setting it would leave this process at the 2 set here."""
    import torch

    from algorithms.config import PPOConfig
    from backends.base import BackendSpec
    from backends.envs import EnvSpec
    from harness.case import CaseRun
    from harness.suite import CaseConfig, MeasureConfig

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        case = CaseConfig("t/vecenv", "t", "vecenv", BackendSpec("vecenv", 1, 2), EnvSpec(),
                          dataclasses.asdict(PPOConfig(steps_per_iteration=64, epochs=1, hidden_sizes=(16, 16))), "report")  # fmt: skip
        result = CaseRun(case, MeasureConfig(warmup_iterations=0, iterations=1, repeats=1, torch_threads=1), seed=0).run()
        assert result["torch_threads"] == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def test_busy_cores_count_every_state_but_idle_and_waiting_and_not_guest_twice():
    """By hand: over 2 s, user 1.5 + nice 0.2 + system 0.6 + irq 0.1 + softirq 0.1 + steal 0.1 = 2.6 CPU-seconds
    busy, 1.3 cores. Idle and iowait are not busy; guest time is already inside user and nice."""
    import psutil

    fields = psutil.cpu_times()._fields
    zero = type(psutil.cpu_times())(**dict.fromkeys(fields, 0.0))
    grown = {"user": 1.5, "nice": 0.2, "system": 0.6, "idle": 1.0, "iowait": 0.4, "irq": 0.1, "softirq": 0.1,
             "steal": 0.1, "guest": 0.7, "guest_nice": 0.05}  # fmt: skip
    after = zero._replace(**{k: v for k, v in grown.items() if k in fields})
    expected = sum(v for k, v in grown.items() if k in fields and k not in ("idle", "iowait", "guest", "guest_nice"))
    assert busy_cores_between(zero, after, 2.0) == pytest.approx(expected / 2.0)
    if set(grown) <= set(fields):  # Linux
        assert busy_cores_between(zero, after, 2.0) == pytest.approx(1.3)


def test_a_busy_process_beside_is_seen_as_a_busy_core():
    """One process spinning beside a sleeping one: advise's reading of the rest of the machine sees at least
    most of a core (more if other tests run at the same time, never less)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # past its start-up
        assert busy_cores_elsewhere(1.0) >= 0.7
    finally:
        spinner.kill()
        spinner.wait()
