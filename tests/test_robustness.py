"""How a run ends when something goes wrong: signals, resume, hangs, failures that would recur, a learner
killed by the OOM killer, a full disk, bad command-line values (issue 11); the shared memory a killed case
leaves (issue 20)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from algorithms.ppo import PPOLearner
from backends.processes import SHM_DIR, SHM_PREFIX_ENV
from harness.machine import commit_info
from harness.results import RUN_FILE, load_run
from harness.runner import SCRATCH_ENV
from tests.conftest import REPO
from tests.test_cli import harness, only_run_dir, run_suite_text

VECENV = """
[suite]
name = "t"
tables = ["speed"]
[env]
id = "Pendulum-v1"
{env}
[ppo]
steps_per_iteration = 64
minibatch_size = 32
epochs = 1
[measure]
warmup_iterations = 0
iterations = 2
repeats = 3
{measure}
[[cases]]
backend = "{backend}"
{case}
"""


def _suite(tmp_path: Path, backend: str = "vecenv", env: str = "", measure: str = "", case: str = "") -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(VECENV.format(backend=backend, env=env, measure=measure, case=case))
    return path


def _scratch_processes() -> list[psutil.Process]:
    """Processes of this session's harness cases (they carry their scratch folder, made in the session's temp
    folder, in their environment); another harness on the machine is none of this test's business."""
    found, ours = [], tempfile.gettempdir() + os.sep
    for p in psutil.process_iter():
        try:
            if p.environ().get(SCRATCH_ENV, "").startswith(ours):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _harness_temp_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).iterdir() if p.name.startswith(("ph", "rl"))}


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_resume_finishes_the_run(tmp_path):
    """`timeout` sends SIGTERM: nothing may outlive the harness, and `--resume` completes the run."""
    before = _harness_temp_dirs()
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", "suites/smoke.toml", "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # stop it while a Ray case runs: the worst case for leftovers
        specs = list(out.glob("*/logs/*.spec.json"))
        if specs and "ray_local" in specs[-1].read_text() and _scratch_processes():
            time.sleep(3)
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 128 + signal.SIGTERM, stdout + stderr
    run_dir = only_run_dir(out)
    run = load_run(run_dir)
    assert run["status"] == "interrupted" and run["stopped_by"] == "SIGTERM" and run["finished"]
    assert (run_dir / "report.md").exists() and "stopped by SIGTERM" in (run_dir / "report.md").read_text()
    assert not _scratch_processes()
    settle = time.monotonic() + 15  # a Ray daemon may still be deleting its files for a moment
    while not _harness_temp_dirs() <= before and time.monotonic() < settle:
        time.sleep(0.5)
    assert _harness_temp_dirs() <= before, _harness_temp_dirs() - before
    assert not list(run_dir.glob("logs/*.scratch")) and not list(run_dir.glob("logs/*.spec.json"))
    unfinished = sum(1 for c in run["cases"] if not any(r["status"] == "ok" for r in c["runs"]))
    assert unfinished > 0

    # The working tree may have uncommitted changes while developing; on a clean clone (CI) no --force is needed.
    force = ["--force"] if commit_info().get("dirty") else []
    resumed = harness("run", "suites/smoke.toml", "--resume", str(run_dir), *force)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    run = load_run(run_dir)
    assert run["status"] == "complete" and len(run["resumed"]) == 1
    assert all(len(c["runs"]) == 1 and c["runs"][0]["status"] == "ok" for c in run["cases"])
    assert sum(1 for c in run["cases"] for r in c["runs"] if r.get("resumed")) == unfinished
    assert f"{unfinished} run(s) by --resume" in (run_dir / "report.md").read_text()


def test_resume_refuses_another_suite_or_code_in_one_line(tmp_path):
    run_dir, _ = run_suite_text(tmp_path, VECENV.format(backend="vecenv", env="", measure="", case=""))
    (tmp_path / "other").mkdir()
    other = _suite(tmp_path / "other", case="envs_per_worker = 2")
    proc = harness("run", str(other), "--resume", str(run_dir))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "cannot resume" in proc.stderr and "suite file changed" in proc.stderr
    record = json.loads((run_dir / RUN_FILE).read_text())
    record["commit"]["id"] = "0" * 40
    (run_dir / RUN_FILE).write_text(json.dumps(record))
    proc = harness("run", str(tmp_path / "suite.toml"), "--resume", str(run_dir))
    assert proc.returncode == 2 and "the code changed" in proc.stderr and "--force" in proc.stderr


def test_a_hung_env_in_serial_fails_within_its_deadline_once(tmp_path):
    """An hour-long env step is a hang; the watchdog ends it after `iteration_timeout_s`, and the case's other
    repeats are not run into the same hang."""
    suite = _suite(tmp_path, backend="serial", env="step_cost_ms = 3600000.0", measure="iteration_timeout_s = 4")
    # The hour-long step ended by the watchdog's 4 s deadline, once: the error names that deadline and the other
    # repeats were never started (a wall-time bound would be another process's to break; the 120 s subprocess
    # timeout only stops a hung test).
    proc = harness("run", str(suite), "--out", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (case,) = load_run(only_run_dir(tmp_path / "out"))["cases"]
    first, *others = case["runs"]
    assert first["error"].startswith("hung: no progress in iteration 0 within its deadline of 4 s"), first["error"]
    assert len(others) == 2 and all(r["error"].startswith("not run: an earlier run") for r in others)


class BrokenLearner(PPOLearner):
    """Fails in its constructor as a bad configuration would: every repeat would fail the same way."""

    def __init__(self, setup):  # noqa: ANN001
        raise ValueError("learning rate schedule 'warp' is not known")


class KilledLearner(PPOLearner):
    """Dies as the OOM killer would kill the process: no exception, no result written."""

    def __init__(self, setup):  # noqa: ANN001
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_failure_during_setup_is_run_once_not_per_repeat(tmp_path):
    suite = _suite(tmp_path, case='algorithm = { name = "tests.test_robustness:BrokenLearner" }')
    proc = harness("run", str(suite), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    (case,) = load_run(only_run_dir(tmp_path / "out"))["cases"]
    first, *others = case["runs"]
    assert first["deterministic"] and "learning rate schedule 'warp'" in first["error"]
    assert [r["log"] for r in others] == ["", ""]  # never started


def test_a_learner_killed_before_its_first_iteration_is_recorded(tmp_path):
    from harness.schema import validate_run

    suite = _suite(tmp_path, case='algorithm = { name = "tests.test_robustness:KilledLearner" }', measure="")
    proc = harness("run", str(suite), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    run_dir = only_run_dir(tmp_path / "out")
    validate_run(run_dir)  # the harness accepts the file it wrote
    for result in load_run(run_dir)["cases"][0]["runs"]:
        assert result["status"] == "error" and "killed by SIGKILL after 0 iteration(s)" in result["error"]
    assert "killed by SIGKILL" in (run_dir / "report.md").read_text()


SHM_SEEN_ENV = "PPO_HARNESS_TEST_SHM_SEEN"
"""Where `KilledMidRun` writes the case's prefix and the segments it saw."""
KILL_ENV = "PPO_HARNESS_TEST_KILL"
"""What `KilledMidRun` SIGKILLs: `case` (its own process) or `group` (the case's whole process group)."""
CENTRAL_MULTIPROCESSING = """
[suite]
name = "t"
tables = ["speed"]
[env]
id = "Pendulum-v1"
[ppo]
steps_per_iteration = 64
minibatch_size = 32
epochs = 1
[measure]
warmup_iterations = 0
iterations = 4
repeats = 1
[[cases]]
backend = "multiprocessing"
workers = 2
inference = "central"
options = { timeout_s = 60 }
algorithm = { name = "tests.test_robustness:KilledMidRun" }
"""


class KilledMidRun(PPOLearner):
    """In its second update (after one whole iteration of four), writes down the shared-memory segments that carry
    the case's prefix, then SIGKILLs the case process, and with `group` every process of its group too."""

    def train(self, rollout):  # noqa: ANN001, ANN201
        if self.version == 1:
            prefix = os.environ[SHM_PREFIX_ENV]
            segments = sorted(p.name for p in SHM_DIR.glob(f"{prefix}*"))
            Path(os.environ[SHM_SEEN_ENV]).write_text(json.dumps({"prefix": prefix, "segments": segments}))
            if os.environ[KILL_ENV] == "group":
                os.killpg(0, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        return super().train(rollout)


@pytest.mark.parametrize("kill", ["case", "group"])
def test_a_killed_case_leaves_no_shared_memory(tmp_path, monkeypatch, kill):
    """Central inference moves every step through shared memory. SIGKILL the case process mid-run and the
    runner's sweep removes every segment carrying the case's prefix (issue 20).

    `case` kills the learner alone: its workers, forkserver and multiprocessing's resource tracker see it go, and
    the tracker unlinks the segments it was told of before the runner looks. `group` kills them all at once (as
    `kill -9 -PGID`, or a container stopped, would): nothing is left to clean up but the runner's sweep."""
    seen_file = tmp_path / "seen.json"
    monkeypatch.setenv(SHM_SEEN_ENV, str(seen_file))
    monkeypatch.setenv(KILL_ENV, kill)
    suite = tmp_path / "suite.toml"
    suite.write_text(CENTRAL_MULTIPROCESSING)
    proc = harness("run", str(suite), "--out", str(tmp_path / "out"), timeout=240)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (result,) = load_run(only_run_dir(tmp_path / "out"))["cases"][0]["runs"]
    assert "killed by SIGKILL after 1 iteration(s)" in result["error"], result["error"]
    seen = json.loads(seen_file.read_text())
    # The runner's own per-case prefix, under this session's: segments made with it existed while the case ran.
    assert seen["prefix"].startswith(os.environ[SHM_PREFIX_ENV]) and seen["prefix"] != os.environ[SHM_PREFIX_ENV]
    assert len(seen["segments"]) == 2, seen  # one per worker's step arrays
    assert sorted(p.name for p in SHM_DIR.glob(f"{seen['prefix']}*")) == []


def test_a_full_disk_ends_the_run_in_one_line_keeping_the_last_good_file(tmp_path, monkeypatch):
    from rich.console import Console

    from harness import runner
    from harness.errors import HarnessError
    from harness.results import save_run
    from harness.suite import load_suite

    writes = []

    def filling_disk(run_dir: Path, run: dict) -> None:
        writes.append(run_dir)
        if len(writes) < 3:
            return save_run(run_dir, run)
        (run_dir / (RUN_FILE + ".tmp")).write_text('{"half": ')  # a write cut short by ENOSPC
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runner, "save_run", filling_disk)
    with pytest.raises(HarnessError) as caught:
        runner.run_suite(load_suite(_suite(tmp_path)), tmp_path / "out", False, [], 600, Console(quiet=True))
    message = str(caught.value)
    assert "No space left on device" in message and "\n" not in message and "--resume" in message
    run_dir = only_run_dir(tmp_path / "out")
    assert not (run_dir / (RUN_FILE + ".tmp")).exists()
    assert len(load_run(run_dir)["cases"][0]["runs"]) == 1  # the last complete write: one finished run


@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf", "soon"])
def test_case_timeout_must_be_a_positive_number(value):
    proc = harness("run", "suites/smoke.toml", "--case-timeout", value)
    assert proc.returncode == 2 and "--case-timeout" in proc.stderr and "Traceback" not in proc.stderr
