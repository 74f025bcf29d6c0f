"""Suite files: valid ones load into typed configs; every mistake is one clear line."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from algorithms.config import APPO_PRESETS, SETTINGS_TABLES, PPOConfig
from backends import REGISTRY
from harness.errors import HarnessError
from harness.suite import CaseConfig, CaseTable, MeasureConfig, SuiteFile, from_json, load_suite, to_json
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

NAMES = list(REGISTRY)  # the choices a misspelt backend is shown, in registry order


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
    assert case.steps_per_iteration == 64 and case.learner_config().learning_rate == 3e-4
    assert suite.parts[0].measure.iterations == 1 and suite.parts[0].measure.repeats == 3
    assert len(suite.sha256) == 64


def test_each_case_reads_its_learners_settings_table(tmp_path):
    """A PPO case and an APPO case side by side: each merges its own table over its own preset, part then case,
    and a case-level `preset` starts over from that preset (the part's keys dropped), as PPO's always did."""
    text = MINIMAL.replace('[ppo]\npreset = "report"', '[appo]\npreset = "tuned"\nepochs = 3\n[ppo]\npreset = "report"')
    text += '[[cases]]\nbackend = "vecenv"\nenvs_per_worker = 4\nlabel = "a"\nalgorithm = { name = "appo" }\n'
    text += '[[cases]]\nbackend = "vecenv"\nenvs_per_worker = 4\nlabel = "b"\nalgorithm = { name = "appo" }\n'
    text += 'appo = { preset = "cartpole" }\n'
    suite = load_suite(write(tmp_path, text))
    ppo, appo, restarted = suite.cases[0], suite.cases[-2], suite.cases[-1]
    assert type(ppo.learner_config()) is PPOConfig and ppo.hyperparameters["steps_per_iteration"] == 64
    assert appo.learner_config() == dataclasses.replace(APPO_PRESETS["tuned"], epochs=3)
    assert appo.preset == "tuned" and "gae_lambda" not in appo.hyperparameters
    assert restarted.learner_config() == APPO_PRESETS["cartpole"] and restarted.preset == "cartpole"


def test_every_settings_table_can_be_given_for_the_part_and_for_a_case():
    """`SuiteFile` and `CaseTable` name the settings tables as fields; a table added to the registry without them
    could never be written in a suite."""
    for model in (SuiteFile, CaseTable):
        assert set(SETTINGS_TABLES) <= {f.name for f in dataclasses.fields(model)}


def test_include_collects_parts():
    suite = load_suite(REPO / "suites" / "report.toml")
    assert [p.name for p in suite.parts] == [
        "speed",
        "convergence",
        "convergence-tuned",
        "convergence-overlap",
        "scaling-pendulum",
        "scaling-env-cost",
        "communication",
        "lag",
        "lag-cartpole",
    ]


def test_a_quick_report_looks_at_the_lag_study():
    """report.toml --quick keeps the lag study's Pendulum sync case and one overlap case that publishes every epoch,
    with the table that gives the lag in SGD steps; the rest of the study (and CartPole) only runs in full."""
    quick = load_suite(REPO / "suites" / "report.toml").quick()
    lag = {p.name: p for p in quick.parts}["lag"]
    assert [(c.backend.schedule, c.backend.publish_every) for c in lag.cases] == [("sync", "iteration"), ("overlap", "epoch")]
    assert "overlap" in lag.tables and "lag-cartpole" not in {p.name for p in quick.parts}
    assert lag.measure.seeds == (100,)  # quick_runs = 1: a look, one seed
    assert {p.name: p for p in quick.parts}["convergence"].measure.seeds == (0, 1, 2)  # the default, three


def test_quick_shrinks_budgets_but_keeps_enough_runs_for_an_interval():
    from harness.stats import MIN_SAMPLES_FOR_INTERVAL

    part = load_suite(REPO / "suites" / "convergence.toml").quick().parts[0]
    assert part.measure.total_steps == 15_000 and part.measure.eval_every == 8192 // 5
    assert len(part.measure.seeds) == MIN_SAMPLES_FOR_INTERVAL == 3 and part.measure.seeds == (0, 1, 2)
    speed = load_suite(REPO / "suites" / "speed.toml").quick().parts[0].measure
    assert speed.repeats == MIN_SAMPLES_FOR_INTERVAL and speed.iterations == 2


def test_quick_keeps_the_cases_each_table_names_and_says_what_it_cut(tmp_path):
    text = MINIMAL.replace('inference = ["worker", "central"]', 'inference = ["worker", "central"]\nquick = { workers = [2] }')
    text += '[[cases]]\nbackend = "vecenv"\nenvs_per_worker = 4\nquick = false\n'
    suite = load_suite(write(tmp_path, text))
    quick = suite.quick()
    assert [c.id for c in quick.cases] == ["t/serial/w1xe1", "t/ray_local/worker/w2xe1", "t/ray_local/central/w2xe1"]
    assert quick.parts[0].measure.iterations == 1  # already below the quick budget
    (cut,) = suite.quick_cuts()
    assert cut == "t: 3 of 6 cases (left out: ray_local/worker/w1xe1, ray_local/central/w1xe1, vecenv/w1xe4)"
    speed_cut = load_suite(REPO / "suites" / "speed.toml").quick_cuts()[0]
    assert speed_cut.startswith("speed: ") and "iterations 2 of 5" in speed_cut


def test_a_part_quick_leaves_out_and_a_quick_that_keeps_nothing_is_refused(tmp_path):
    write(tmp_path, MINIMAL.replace('name = "t"', 'name = "other"\nquick = false'), "other.toml")
    suite = load_suite(write(tmp_path, MINIMAL.replace('name = "t"', 'name = "t"\ninclude = ["other.toml"]')))
    assert [p.name for p in suite.quick().parts] == ["t"] and suite.quick_cuts()[1] == "other: left out"
    nothing = load_suite(write(tmp_path, MINIMAL.replace('name = "t"', 'name = "t"\nquick = false'), "none.toml"))
    with pytest.raises(HarnessError, match="--quick keeps no case"):
        nothing.quick()


@pytest.mark.parametrize(
    ("quick", "message"),
    [
        (
            "quick = { workers = [4] }",
            "[[cases]] #2 quick: 'workers' [4] is not in the table's workers [1, 2]; quick keeps a subset",
        ),
        (
            "quick = { worker = [1] }",
            "unknown key 'worker'; valid keys: envs_per_worker, inference, schedule, torch_threads, workers",
        ),
        ('quick = "yes"', "quick"),
    ],
)
def test_a_quick_sweep_must_be_part_of_the_sweep(tmp_path, quick, message):
    text = MINIMAL.replace('inference = ["worker", "central"]', f'inference = ["worker", "central"]\n{quick}')
    with pytest.raises(HarnessError) as caught:
        load_suite(write(tmp_path, text))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_quick_may_not_leave_out_the_baseline_alone(tmp_path):
    text = MINIMAL.replace('backend = "serial"', 'backend = "serial"\nquick = false')
    with pytest.raises(HarnessError, match="--quick would leave out the baseline 'serial'"):
        load_suite(write(tmp_path, text))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("iterations = 1", "iteratons = 1"), "unknown key 'iteratons'; valid keys: eval_episodes"),
        (("iterations = 1", 'iterations = "five"'), "[measure]: 'iterations' must be an integer, got 'five'"),
        (
            ('backend = "serial"', 'backend = "rayy"'),
            f"[[cases]] #1: 'backend' must be {', '.join(map(repr, NAMES[:-1]))} or {NAMES[-1]!r}, got 'rayy'",
        ),
        (('preset = "report"', 'preset = "fast"'), "unknown preset 'fast'; choose from report, tuned, cartpole"),
        (("steps_per_iteration = 64", "learning_rate = -1.0"), "learning_rate=-1.0"),
        (("steps_per_iteration = 64", "steps_per_iteration = 64\ntarget_kl = 0.0"), "target_kl=0.0"),
        # The network (issue 23): at least one layer, each of a positive width, and a known activation.
        (
            ("steps_per_iteration = 64", "steps_per_iteration = 64\nhidden_sizes = []"),
            "[ppo]: hidden_sizes must name at least one layer width",
        ),
        (
            ("steps_per_iteration = 64", "steps_per_iteration = 64\nhidden_sizes = [64, 0]"),
            "[ppo]: hidden_sizes must be positive integers, got [64, 0]",
        ),
        (
            ("steps_per_iteration = 64", 'steps_per_iteration = 64\nactivation = "gelu"'),
            "[ppo]: unknown activation 'gelu'; one of tanh, relu",
        ),
        (("steps_per_iteration = 64", "steps_per_iteration = 64\nhidden_size = 64"), "[ppo]: unknown key 'hidden_size'"),
        # The minibatch step's kernel (issue 24): a known one; numba computes a Gaussian policy on the CPU, compiled.
        (
            ("steps_per_iteration = 64", 'steps_per_iteration = 64\nkernel = "jax"'),
            "[ppo]: unknown kernel 'jax'; one of torch, numba",
        ),
        (
            ("steps_per_iteration = 64", 'steps_per_iteration = 64\nkernel = "numba"\ncompile = true'),
            "[ppo]: compile = true compiles the torch kernel; kernel 'numba' is compiled already",
        ),
        (
            ("steps_per_iteration = 64", 'steps_per_iteration = 64\nkernel = "numba"\n[env]\nid = "CartPole-v1"'),
            "[[cases]] #1 ppo: kernel 'numba' runs Gaussian policies, and CartPole-v1 has a categorical one; use kernel "
            "'torch' for discrete actions",
        ),
        # Each learner's settings table takes its own keys: a PPO-only key in [appo], an APPO-only one in [ppo].
        (
            ('[ppo]\npreset = "report"', '[algorithm]\nname = "appo"\n[appo]\ntarget_kl = 0.02'),
            (
                "[appo]: unknown key 'target_kl'; valid keys: activation, anneal_lr, clip_against, clip_c, clip_pg_rho",
                "trace_lambda",
            ),
        ),
        (("steps_per_iteration = 64", "steps_per_iteration = 64\nclip_rho = 1.0"), "[ppo]: unknown key 'clip_rho'"),
        (
            ('[ppo]\npreset = "report"', '[algorithm]\nname = "appo"\n[appo]\npreset = "report"'),
            "[appo]: unknown preset 'report'; choose from default, tuned, cartpole",
        ),
        (
            ("[ppo]", '[algorithm]\nname = "appo"\n[ppo]'),
            "[ppo]: applies to no case: every case trains a learner whose settings are [appo]; put these keys there",
        ),  # fmt: skip
        (
            ('backend = "serial"', 'backend = "serial"\nalgorithm = { name = "appo" }\nppo = { epochs = 2 }'),
            "[[cases]] #1 ppo: this case trains 'appo', whose settings are its [appo] table; move these keys there",
        ),
        (('[ppo]\npreset = "report"', '[algorithm]\nname = "appo"\n[appo]\nclip_c = 0'), "clip_c=0"),
        (
            ('[ppo]\npreset = "report"', '[algorithm]\nname = "appo"\n[appo]\nclip_against = "old"'),
            "[appo]: 'clip_against' must be 'proximal' or 'behaviour', got 'old'",
        ),
        (('name = "t"', 'name = "t"\ntables = ["speed", "speeed"]'), ("[suite]: 'tables' must be 'speed', ", "got 'speeed'")),
        (('baseline = "serial"', 'baseline = "nope"'), "'nope' is not a case label"),
        (
            ('inference = ["worker", "central"]', 'inference = "remote"'),
            "[[cases]] #2: 'inference' must be 'worker' or 'central', got 'remote'",
        ),
        (('backend = "serial"', 'backend = "serial"\ninference = "central"'), "backend 'serial' has no inference mode 'central'"),
        (("steps_per_iteration = 64", "steps_per_iteration = 63"), "does not split over 2 envs"),
        (("[measure]", '[env]\nid = "NoSuchEnv-v9"\n[measure]'), "'NoSuchEnv-v9' is not a registered gymnasium env id"),
        (("[measure]", '[env]\nstep_cost_kind = "spin"\n[measure]'), "step_cost_kind must be one of sleep, busy"),
        (
            ("[measure]", '[env]\nstep_cost_distribution = "weibull"\n[measure]'),
            "step_cost_distribution must be one of constant, lognormal, pareto",
        ),
        (("[measure]", "[env]\nslow_env_factor = -2.0\n[measure]"), "slow_env_factor must be a finite number >= 1"),
        (('backend = "serial"', 'backend = "serial"\nworkers = 4'), "is one vector env, stepped by the learner"),
        (("workers = [1, 2]", "workers = [1, 2]\noptions = { adress = 1 }"), "unknown key 'adress'"),
        (
            ("[measure]", '[algorithm]\nname = "a2c"\n[measure]'),
            "unknown algorithm 'a2c'; choose one of ppo, appo or give 'module:Class'",
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
        (
            ("workers = [1, 2]", 'workers = [1, 2]\nschedule = "async"'),
            "[[cases]] #2: 'schedule' must be 'sync' or 'overlap', got 'async'",
        ),
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
    for fragment in message if isinstance(message, tuple) else (message,):
        assert fragment in text
    assert str(path) in text and "\n" not in text


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(HarnessError, match="suite file not found"):
        load_suite(tmp_path / "absent.toml")
    with pytest.raises(HarnessError, match="not valid TOML"):
        load_suite(write(tmp_path, "[suite\nname = 1"))


OPTIONS_SUITE = """
[ppo]
steps_per_iteration = 64
[[cases]]
backend = "{backend}"
workers = 2
options = {{ {options} }}
"""


@pytest.mark.parametrize(
    ("backend", "options", "messages"),
    [
        ("multiprocessing", 'start_method = "thread"', ("[[cases]] #1 options (multiprocessing): 'start_method' must be ", "got 'thread'")),
        ("multiprocessing", "timeout_s = -1", ("'timeout_s' must be greater than 0.0, got -1",)),
        ("multiprocessing", "timeout_s = nan", ("'timeout_s' must be greater than 0.0, got nan",)),
        ("multiprocessing", "timeout_s = inf", ("'timeout_s' is refused: predicate 'isfinite' failed, got inf",)),
        ("ray_local", 'timeout_s = "60"', ("[[cases]] #1 options (ray_local): 'timeout_s' must be a number, got '60'",)),
        ("ray_local", "num_cpus = 0", ("'num_cpus' must be greater than 0, got 0",)),
        ("ray_local", "num_cpus = 1.5", ("'num_cpus' must be an integer, got 1.5",)),
        ("ray_cluster", "address = 6379", ("[[cases]] #1 options (ray_cluster): 'address' must be a string, got 6379",)),
    ],
)  # fmt: skip
def test_backend_options_are_checked_by_the_registry_entry(tmp_path, backend, options, messages):
    path = write(tmp_path, OPTIONS_SUITE.format(backend=backend, options=options))
    with pytest.raises(HarnessError) as error:
        load_suite(path)
    text = str(error.value)
    assert all(m in text for m in messages), text
    assert text.startswith(f"{path}: ") and "\n" not in text


def test_torch_threads_is_swept_per_case_and_quick_may_keep_a_subset(tmp_path):
    text = MINIMAL.replace('backend = "serial"', 'backend = "serial"\ntorch_threads = [1, 0]\nquick = { torch_threads = [1] }')
    text = text.replace('baseline = "serial"', 'baseline = "serial torch 1"')
    part = load_suite(write(tmp_path, text)).parts[0]
    threads = {c.label: c.torch_threads for c in part.cases if c.backend.name == "serial"}
    assert threads == {"serial torch 1": 1, "serial torch cores": 0}
    assert [c.torch_threads for c in part.quick().cases if c.backend.name == "serial"] == [1]
    others = [c.torch_threads for c in part.cases if c.backend.name != "serial"]
    assert others and set(others) == {None}  # the part's [measure] setting


def test_valid_backend_options_load(tmp_path):
    options = 'start_method = "spawn", timeout_s = 30'
    (case, *_) = load_suite(write(tmp_path, OPTIONS_SUITE.format(backend="multiprocessing", options=options))).cases
    assert case.backend.options == {"start_method": "spawn", "timeout_s": 30.0}


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_step_cost_must_be_finite(tmp_path, value):
    path = write(tmp_path, MINIMAL.replace("[measure]", f"[env]\nstep_cost_ms = {value}\n[measure]"))
    with pytest.raises(HarnessError, match=r"\[env\]: step_cost_ms must be a finite number >= 0"):
        load_suite(path)


@pytest.mark.parametrize("self_include", [True, False])
def test_include_cycle_is_one_line_naming_the_cycle(tmp_path, self_include):
    other = "a.toml" if self_include else "b.toml"
    write(tmp_path, f'[suite]\ninclude = ["{other}"]\n', "a.toml")
    write(tmp_path, '[suite]\ninclude = ["a.toml"]\n', "b.toml")
    with pytest.raises(HarnessError) as error:
        load_suite(tmp_path / "a.toml")
    text = str(error.value)
    cycle = "a.toml -> a.toml" if self_include else "a.toml -> b.toml -> a.toml"
    assert f"[suite] include: include cycle: {cycle}" in text and "\n" not in text


def test_suite_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(MINIMAL.replace('name = "t"', 'name = "t"\ndescription = "caf\u00e9"').encode("latin-1"))
    with pytest.raises(HarnessError) as error:
        load_suite(path)
    assert str(error.value) == f"{path}: not UTF-8 text (byte 0xe9 on line 4); TOML files must be saved as UTF-8"


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(MINIMAL.encode("utf-8-sig"))
    assert [c.id for c in load_suite(path).cases] == [c.id for c in load_suite(write(tmp_path, MINIMAL)).cases]


def test_cases_round_trip_through_json():
    """What the case subprocess is given is the case itself: dump, JSON text, validate, equal."""
    import torch

    for path in sorted((REPO / "suites").glob("*.toml")):
        if 'device = "cuda"' in path.read_text() and not torch.cuda.is_available():
            continue
        suite = load_suite(path)
        for part in suite.parts:
            assert from_json(MeasureConfig, json.loads(json.dumps(to_json(part.measure)))) == part.measure
            for case in part.cases:
                assert from_json(CaseConfig, json.loads(json.dumps(to_json(case)))) == case, case.id


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


FAILURE_SUITE = """
[ppo]
steps_per_iteration = 64
[[cases]]
backend = "{backend}"
inference = "{inference}"
options = {{ {options} }}
"""


@pytest.mark.parametrize(
    ("backend", "inference", "options", "message"),
    [
        ("multiprocessing", "worker", 'on_worker_failure = "retry"', "[[cases]] #1 options (multiprocessing): 'on_worker_failure' must be 'fail' or 'restart', got 'retry'"),
        ("ray_local", "worker", 'on_worker_failure = "restart", max_restarts = 0', "'max_restarts' must be greater than 0, got 0"),
        ("ray_local", "worker", "max_restarts = 2", 'options.max_restarts applies only with on_worker_failure = "restart"'),
        ("multiprocessing", "central", 'on_worker_failure = "restart"', 'on_worker_failure = "restart" needs inference = "worker"'),
        ("vecenv", "worker", 'on_worker_failure = "restart"', "backend 'vecenv' samples in the learner's process: it has no worker to restart"),
        ("serial", "worker", 'on_worker_failure = "fail"', "on_worker_failure needs one of multiprocessing, ray_local, ray_cluster"),
    ],
)  # fmt: skip
def test_worker_failure_options_are_checked(tmp_path, backend, inference, options, message):
    path = write(tmp_path, FAILURE_SUITE.format(backend=backend, inference=inference, options=options))
    with pytest.raises(HarnessError) as error:
        load_suite(path)
    text = str(error.value)
    assert message in text and text.startswith(f"{path}: ") and "\n" not in text


def test_restart_options_load_and_reach_the_backend_spec(tmp_path):
    options = 'on_worker_failure = "restart", max_restarts = 5'
    (case,) = load_suite(write(tmp_path, FAILURE_SUITE.format(backend="ray_local", inference="worker", options=options))).cases
    assert case.backend.options == {"on_worker_failure": "restart", "max_restarts": 5}
    assert from_json(CaseConfig, json.loads(json.dumps(to_json(case)))) == case


def test_the_suite_format_imports_no_part_of_the_report():
    """harness.suite takes table and claim names from the leaf harness.names, not from the report (issue 20)."""
    code = "import harness.suite; import sys; print([m for m in sys.modules if m.startswith('harness.report')])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_table_and_claim_names_are_the_registries_keys():
    from harness.names import CLAIM_NAMES, TABLE_NAMES
    from harness.report import CLAIMS, TABLES

    assert tuple(TABLES) == TABLE_NAMES and tuple(CLAIMS) == CLAIM_NAMES


TOOL_SUITE = """
[ppo]
steps_per_iteration = 64
[[cases]]
backend = "{backend}"
{settings}
"""


@pytest.mark.parametrize("backend", ["gym_async", "sb3_subproc"])
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ('inference = "central"\nworkers = 2', "is one vector env, stepped by the learner: set workers = 1 and sweep 'envs_per_worker'"),
        ('inference = "worker"', "has no inference mode 'worker'; choose central"),
        ("", "has no inference mode 'worker'; choose central"),  # the suite's default inference is the workers'
    ],
)  # fmt: skip
def test_a_tool_backend_is_one_vector_env_with_central_inference(tmp_path, backend, settings, message):
    path = write(tmp_path, TOOL_SUITE.format(backend=backend, settings=settings))
    with pytest.raises(HarnessError) as error:
        load_suite(path)
    text = str(error.value)
    assert f"backend '{backend}' {message}" in text and text.startswith(f"{path}: ") and "\n" not in text
    (case,) = load_suite(
        write(tmp_path, TOOL_SUITE.format(backend=backend, settings='inference = "central"\nenvs_per_worker = 4'))
    ).cases
    assert (case.backend.workers, case.backend.num_envs, case.backend.inference) == (1, 4, "central")


OVERLAP_SUITE = """
[suite]
name = "t"
baseline = "mp"
[ppo]
steps_per_iteration = 64
minibatch_size = 16
epochs = 2
[measure]
iterations = 1
[[cases]]
backend = "multiprocessing"
label = "mp"
workers = 2
schedule = "overlap"
"""


@pytest.mark.parametrize(
    ("line", "publications"), [('publish_every = "epoch"', 2), ("publish_every = 3", 3), ("publish_every = 8", 1)]
)
def test_publish_every_is_counted_from_the_learners_settings(tmp_path, line, publications):
    """64 steps in minibatches of 16, 2 epochs: 8 optimiser steps an update; after each epoch (2 versions an update),
    every 3 steps (after 3, 6 and the end: 3), or every 8 (only the end: 1)."""
    text = OVERLAP_SUITE.replace('schedule = "overlap"', f'schedule = "overlap"\n{line}')
    (case,) = load_suite(write(tmp_path, text)).parts[0].cases
    assert case.backend.publications_per_batch == publications and case.backend.weights_kept == publications + 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('schedule = "overlap"\npublish_every = 0', "[[cases]] #1 publish_every: publish_every must be 'iteration', 'epoch' or a positive number of optimiser steps, got 0"),
        ('schedule = "overlap"\npublish_every = "weekly"', "got 'weekly'"),
        ('schedule = "overlap"\npublish_every = true', "got True"),
        ('schedule = ["sync", "overlap"]\npublish_every = "epoch"', "publish_every = 'epoch' needs schedule 'overlap': under 'sync' no worker samples"),
        ('schedule = "overlap"\npublish_every = 1', "[[cases]] #1 publish_every: case t/mp/w16xe1: 8 publications per update, more than the 4 steps per env"),
    ],
)  # fmt: skip
def test_publish_every_it_cannot_honour_is_one_line(tmp_path, change, message):
    text = OVERLAP_SUITE.replace('schedule = "overlap"', change)
    text = text.replace("workers = 2", "workers = 16") if "= 1" in change else text
    with pytest.raises(HarnessError) as caught:
        load_suite(write(tmp_path, text))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_learner_whose_settings_count_no_steps_cannot_publish(tmp_path, monkeypatch):
    """A settings table without `publications` (a learner of another shape, registered beside PPO's) is refused."""

    @dataclasses.dataclass(frozen=True)
    class Plain:
        steps_per_iteration: int = 64
        hidden_sizes: tuple[int, ...] = (8, 8)
        activation: str = "tanh"

    plain = dataclasses.replace(SETTINGS_TABLES["ppo"], model=Plain, presets={"only": Plain()}, default_preset="only")
    monkeypatch.setitem(SETTINGS_TABLES, "ppo", plain)
    text = OVERLAP_SUITE.replace("minibatch_size = 16\nepochs = 2\n", "").replace(
        'schedule = "overlap"', 'schedule = "overlap"\npublish_every = "epoch"'
    )
    with pytest.raises(HarnessError, match=r"cannot publish during its update .*; leave publish_every out"):
        load_suite(write(tmp_path, text))
