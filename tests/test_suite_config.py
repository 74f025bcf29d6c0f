"""Suite files: valid ones load into typed configs; every mistake is one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.suite import load_suite
from tests.conftest import REPO

MINIMAL = """
[suite]
name = "t"
baseline = "serial"
[ppo]
preset = "report"
steps_per_iteration = 64
[measure]
iterations = 1
[[cases]]
backend = "serial"
[[cases]]
backend = "ray_local"
workers = [1, 2]
inference = ["worker", "central"]
"""


def write(tmp_path: Path, text: str, name: str = "suite.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_shipped_suite_loads():
    import torch

    for path in sorted((REPO / "suites").glob("*.toml")):
        if 'device = "cuda"' in path.read_text() and not torch.cuda.is_available():
            # A suite that asks for a GPU is refused, in one line, where there is none.
            with pytest.raises(HarnessError, match="torch sees no CUDA GPU"):
                load_suite(path)
            continue
        suite = load_suite(path)
        assert suite.cases, path


def test_sweep_expands_and_configs_are_typed(tmp_path):
    suite = load_suite(write(tmp_path, MINIMAL))
    ids = [c.id for c in suite.cases]
    assert ids == [
        "t/serial/w1xe1",
        "t/ray_local/worker/w1xe1",
        "t/ray_local/central/w1xe1",
        "t/ray_local/worker/w2xe1",
        "t/ray_local/central/w2xe1",
    ]
    case = suite.cases[0]
    assert case.ppo.steps_per_iteration == 64 and case.ppo.learning_rate == 3e-4
    assert suite.parts[0].measure.iterations == 1 and suite.parts[0].measure.repeats == 3
    assert len(suite.sha256) == 64


def test_include_collects_parts():
    suite = load_suite(REPO / "suites" / "report.toml")
    assert [p.name for p in suite.parts] == [
        "speed",
        "convergence",
        "convergence-overlap",
        "scaling-pendulum",
        "scaling-env-cost",
        "communication",
    ]


def test_quick_shrinks_budgets():
    part = load_suite(REPO / "suites" / "convergence.toml").quick().parts[0]
    assert part.measure.total_steps == 15_000 and part.measure.seeds == (0, 1) and part.measure.repeats == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("iterations = 1", "iteratons = 1"), "unknown key 'iteratons'; valid keys: eval_episodes"),
        (("iterations = 1", 'iterations = "five"'), "'iterations' must be int, got 'five'"),
        (('backend = "serial"', 'backend = "rayy"'), "unknown backend 'rayy'; choose one of serial, vecenv, multiprocessing"),
        (('preset = "report"', 'preset = "fast"'), "unknown preset 'fast'; choose from report, tuned"),
        (("steps_per_iteration = 64", "learning_rate = -1.0"), "learning_rate=-1.0"),
        (('name = "t"', 'name = "t"\ntables = ["speed", "speeed"]'), "unknown table 'speeed'"),
        (('baseline = "serial"', 'baseline = "nope"'), "'nope' is not a case label"),
        (('inference = ["worker", "central"]', 'inference = "remote"'), "has no inference mode 'remote'"),
        (("steps_per_iteration = 64", "steps_per_iteration = 63"), "does not split over 2 envs"),
        (("[measure]", '[env]\nid = "NoSuchEnv-v9"\n[measure]'), "'NoSuchEnv-v9' is not a registered gymnasium env id"),
        (("[measure]", '[env]\nstep_cost_kind = "spin"\n[measure]'), "step_cost_kind must be one of sleep, busy"),
        (('backend = "serial"', 'backend = "serial"\nworkers = 4'), "runs in one process"),
        (("workers = [1, 2]", "workers = [1, 2]\noptions = { adress = 1 }"), "unknown key 'adress'"),
        (
            ("[measure]", '[algorithm]\nname = "a2c"\n[measure]'),
            "unknown algorithm 'a2c'; choose one of ppo or give 'module:Class'",
        ),
        (("[measure]", '[algorithm]\nname = "no_such_module:L"\n[measure]'), "cannot load algorithm 'no_such_module:L'"),
        (("[measure]", '[algorithm]\nname = "harness.suite:Suite"\n[measure]'), "is not a subclass of algorithms.base.Learner"),
        (("[measure]", '[algorithm]\ndevice = "tpu"\n[measure]'), "device must be one of cpu, cuda, auto"),
        (("[measure]", '[algorithm]\ndevise = "cpu"\n[measure]'), "unknown key 'devise'; valid keys: device, name"),
        (
            ('backend = "serial"', 'backend = "serial"\nschedule = "overlap"'),
            "backend 'serial' cannot overlap sampling with training",
        ),
        (
            ('inference = ["worker", "central"]', 'inference = ["worker", "central"]\nschedule = "overlap"'),
            'needs inference = "worker"',
        ),
        (("workers = [1, 2]", 'workers = [1, 2]\nschedule = "async"'), "unknown schedule 'async'; choose sync, overlap"),
        (("workers = [1, 2]", "workers = [1, 2]\nmax_lag = 0"), "'max_lag' must be at least 1"),
        (
            ("iterations = 1", 'mode = "convergence"\nwarmup_iterations = 1'),
            "'warmup_iterations' does not apply in convergence mode",
        ),
    ],
)
def test_mistakes_name_file_key_and_choices(tmp_path, change, message):
    old, new = change
    assert old in MINIMAL
    path = write(tmp_path, MINIMAL.replace(old, new, 1))
    with pytest.raises(HarnessError) as error:
        load_suite(path)
    text = str(error.value)
    assert message in text
    assert str(path) in text and "\n" not in text


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(HarnessError, match="suite file not found"):
        load_suite(tmp_path / "absent.toml")
    with pytest.raises(HarnessError, match="not valid TOML"):
        load_suite(write(tmp_path, "[suite\nname = 1"))


@pytest.mark.parametrize("bad", ["iteratons = 1", 'iterations = "five"'])
def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path, bad):
    path = write(tmp_path, MINIMAL.replace("iterations = 1", bad))
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()  # nothing half-made
