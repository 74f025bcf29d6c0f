"""`harness/run_schema.json`, generated from the run record's models, against a fresh run; broken copies
of it failing with the JSON path named, both in the schema check and in `load_run`."""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from backends.base import Collected, SyncReport, WorkerRestart, WorkerShare
from backends.envs import EnvCost
from backends.remote import ClockOffset
from harness import schema
from harness.case import Evaluation, Memory
from harness.errors import HarnessError
from harness.results import RUN_FILE, SCHEMA_VERSION, load_run
from harness.schedule import Iteration, PolicyLag, Scheduled
from harness.schema import SCHEMA_PATH, WRITE_COMMAND, load_schema, schema_text, validate_run
from tests.conftest import REPO

# A tiny run that takes every branch of the schema: a throughput part with a case that
# works and one that fails (a string where Pendulum needs a number), and an included
# convergence part with periodic and final evaluations. vecenv only: no worker processes.
THROUGHPUT_SUITE = """
[suite]
name = "schema-check"
include = ["learn.toml"]
[ppo]
steps_per_iteration = 64
epochs = 1
hidden_sizes = [32, 32]
[measure]
warmup_iterations = 1
iterations = 1
repeats = 1
[[cases]]
backend = "vecenv"
envs_per_worker = 2
[[cases]]
backend = "vecenv"
label = "broken env"
env = { kwargs = { g = "not a number" } }
"""
CONVERGENCE_SUITE = """
[suite]
name = "learn"
tables = ["convergence"]
[ppo]
steps_per_iteration = 64
epochs = 1
hidden_sizes = [32, 32]
[measure]
mode = "convergence"
seeds = [0]
total_steps = 128
eval_every = 64
eval_episodes = 1
final_eval_episodes = 1
[[cases]]
backend = "vecenv"
envs_per_worker = 2
"""


def schema_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.schema", *args], capture_output=True, text=True, cwd=REPO, timeout=60)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A fresh run folder, written by the CLI as a user runs it."""
    suites = tmp_path_factory.mktemp("suites")
    (suites / "main.toml").write_text(THROUGHPUT_SUITE)
    (suites / "learn.toml").write_text(CONVERGENCE_SUITE)
    out = tmp_path_factory.mktemp("runs")
    command = [sys.executable, "-m", "harness", "run", str(suites / "main.toml"), "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # 1: the broken case failed, as planned
    (found,) = [p for p in out.iterdir() if p.is_dir()]
    return found


@pytest.fixture(scope="module")
def run(run_dir) -> dict[str, Any]:
    return json.loads((run_dir / RUN_FILE).read_text())


def test_schema_is_valid_draft_2020_12():
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_checked_in_schema_is_the_one_the_models_generate():
    """harness/run_schema.json is generated from harness/records.py (and the suite's dataclasses), never edited."""
    if SCHEMA_PATH.read_text() != schema_text():
        pytest.fail(f"{SCHEMA_PATH} differs from what the run-record models generate; run `{WRITE_COMMAND}`")
    assert load_schema()["properties"]["schema_version"]["const"] == SCHEMA_VERSION


def test_write_regenerates_the_schema(tmp_path, monkeypatch):
    monkeypatch.setattr(schema, "SCHEMA_PATH", tmp_path / "run_schema.json")
    assert schema.main(["--write"]) == 0
    assert (tmp_path / "run_schema.json").read_text() == SCHEMA_PATH.read_text()


# The dataclasses whose fields are a measured record's keys, by the name the schema gives them (issue 20).
MEASURED = {"Iteration": Iteration, "WorkerShare": WorkerShare, "WorkerRestart": WorkerRestart, "ClockOffset": ClockOffset,
            "PolicyLag": PolicyLag, "Evaluation": Evaluation, "Memory": Memory}  # fmt: skip


@pytest.mark.parametrize("name", MEASURED)
def test_checked_in_schema_has_exactly_the_measuring_dataclass_fields(name):
    """A field added to the dataclass but not the published schema (or the reverse) fails here: the record's
    keys are defined once, by the object that measured them."""
    definition = load_schema()["$defs"][name]
    fields = {f.name for f in dataclasses.fields(MEASURED[name])}
    assert set(definition["properties"]) == fields
    assert set(definition.get("required", [])) == fields - set(getattr(MEASURED[name], "NOT_REQUIRED", ()))
    assert definition["additionalProperties"] is True  # a new figure needs no new schema version


def test_a_fixture_iteration_has_the_keys_an_iteration_records():
    """Today's version's fixture (tests/fixtures/runs/, written by that version's code) has exactly the keys the
    measuring dataclasses define."""
    fixture = json.loads((REPO / f"tests/fixtures/runs/v{SCHEMA_VERSION}/smoke/run.json").read_text())
    runs = {case["backend"]["name"]: case["runs"][0] for case in fixture["cases"]}
    iteration = runs["multiprocessing"]["iterations"][0]
    assert set(iteration) == {f.name for f in dataclasses.fields(Iteration)}
    assert set(iteration["workers"][0]) == {f.name for f in dataclasses.fields(WorkerShare)}
    assert set(runs["ray_local"]["backend"]["placement"][0]["clock"]) == {f.name for f in dataclasses.fields(ClockOffset)}
    assert set(iteration["policy_lag"]) == {f.name for f in dataclasses.fields(PolicyLag)}
    assert set(runs["multiprocessing"]["memory"]) == {f.name for f in dataclasses.fields(Memory)}
    convergence = json.loads((REPO / "tests/fixtures/runs/v4/convergence/run.json").read_text())
    evaluation = convergence["cases"][0]["runs"][0]["evaluations"][0]
    assert set(evaluation) == {f.name for f in dataclasses.fields(Evaluation)}


def test_an_iteration_record_is_its_dataclass_as_json():
    """`Iteration.measured` + `record()`: what case.py writes, from a schedule's result and a backend's batch."""
    rollout = SimpleNamespace(num_steps=8, policy_version=3, episode_returns=np.array([-100.0, -300.0]))
    share = WorkerShare(compute_s=0.5, bytes=10, sent_s=0.0, start_s=0.1, ready_s=0.6)
    collected = Collected(rollout, fragment_versions=(2,), workers=(share,), transfer_s=0.01, dispatch_s=0.002)  # type: ignore[arg-type]
    done = Scheduled(between_s=0.01, sync_s=0.1, collect_s=0.7, train_s=0.2, total_s=1.01, sync_bytes=100, collected=collected,
                     stats={"approx_kl": np.float32(0.5)}, lags=(1,), sgd_lags=(32,))  # fmt: skip
    record = Iteration.measured(done, index=0, warmup=True, train_wall_s=1.0, steps_trained=8,
                                sync_reports=[SyncReport(bytes_sent=100, bytes_network=0)], restarts=[],
                                env_cost=EnvCost(0.008, 8)).record()  # fmt: skip
    assert record["workers"] == [dataclasses.asdict(share)] and record["policy_lag"] == {
        "min": 1, "mean": 1.0, "max": 1, "sgd_steps_min": 32, "sgd_steps_mean": 32.0, "sgd_steps_max": 32}  # fmt: skip
    assert record["episode_return_mean"] == -200.0 and record["env_cost_ms_mean"] == pytest.approx(1.0)
    assert record["sync_bytes_serialized"] == 100 and record["sync_in_process"] is False and record["transfer_bytes"] is None
    assert json.loads(json.dumps(record)) == record  # plain JSON already
    Draft202012Validator({"$defs": load_schema()["$defs"], "$ref": "#/$defs/Iteration"}).validate(record)


def test_no_class_name_means_two_things():
    """Each class name in the code is one class (the record's Iteration is not the schedule's result)."""
    names = [
        node.name
        for path in [*REPO.glob("harness/**/*.py"), *REPO.glob("backends/*.py"), *REPO.glob("algorithms/*.py")]
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
    ]
    assert [name for name, n in Counter(names).items() if n > 1] == []


def test_fresh_run_validates(run_dir, run):
    # The run took every branch: an ok run, an error run, evaluations.
    runs = [r for case in run["cases"] for r in case["runs"]]
    assert {r["status"] for r in runs} == {"ok", "error"}
    assert any(r.get("evaluations") for r in runs) and any("final_evaluation" in r for r in runs)
    validate_run(run_dir)
    validate_run(run_dir / RUN_FILE)
    assert load_run(run_dir) == run


def test_extra_keys_need_no_new_schema_version(run, tmp_path):
    """A new field (here one per iteration, one per run, one in a config) is accepted by both checks."""
    extended = copy.deepcopy(run)
    _ok_run(extended)["iterations"][0]["new_figure_s"] = 0.5
    _ok_run(extended)["new_note"] = "x"
    extended["cases"][0]["hyperparameters"]["new_setting"] = 1
    (tmp_path / RUN_FILE).write_text(json.dumps(extended))
    validate_run(tmp_path)
    assert load_run(tmp_path) == extended


def test_cli_accepts_a_valid_run(run_dir):
    proc = schema_cli(str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: ") and f"schema version {SCHEMA_VERSION}" in proc.stdout


def _ok_run(run: dict[str, Any]) -> dict[str, Any]:
    return next(r for case in run["cases"] for r in case["runs"] if r["status"] == "ok")


def _set(keys: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(run: dict[str, Any]) -> None:
        target = run
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


BROKEN: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("top-level key missing", lambda run: run.pop("machine"), "$.machine: required key is missing"),
    ("future schema version", _set(["schema_version"], 999), f"$.schema_version: must be {SCHEMA_VERSION}, got 999"),
    ("today's record labelled version 1", _set(["schema_version"], 1), f"$.schema_version: must be {SCHEMA_VERSION}, got 1"),
    ("case config missing a field", lambda run: run["cases"][0]["hyperparameters"].pop("steps_per_iteration"),
     "$.cases[0].hyperparameters.steps_per_iteration: required key is missing"),
    ("wrong type in case config", _set(["cases", 0, "backend", "workers"], "2"), "$.cases[0].backend.workers: expected integer, got string"),
    ("run without status", lambda run: run["cases"][0]["runs"][0].pop("status"), "$.cases[0].runs[0].status: required key is missing"),
    ("failed run without its error", lambda run: run["cases"][1]["runs"][0].pop("error"), "$.cases[1].runs[0].error: required key is missing"),
    ("phase timing missing", lambda run: _ok_run(run)["iterations"][0].pop("collect_s"), ".iterations[0].collect_s: required key is missing"),
    ("phase timing of wrong type", lambda run: _ok_run(run)["iterations"][0].update({"sync_s": "fast"}), ".iterations[0].sync_s: expected number, got string"),
    ("iterations not a list", lambda run: _ok_run(run).update({"iterations": {}}), ".iterations: expected array, got object"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "expected"), [pytest.param(c, e, id=name) for name, c, e in BROKEN])
def test_broken_copy_fails_naming_the_path(run, tmp_path, change, expected):
    broken = copy.deepcopy(run)
    change(broken)
    (tmp_path / RUN_FILE).write_text(json.dumps(broken))
    with pytest.raises(HarnessError) as caught:
        validate_run(tmp_path)
    message = str(caught.value)
    assert expected in message and message.startswith(str(tmp_path / RUN_FILE))
    assert "\n" not in message and len(message) < 300


# load_run checks the version first, in words of its own, and migrates an older record (harness/migrations.py), which
# finds what that version always wrote missing; every other problem it words as the schema check does.
LOAD_RUN_SAYS = {
    "future schema version": f"has results schema version 999; this harness reads versions 1 to {SCHEMA_VERSION}; it was "
    "written by a newer harness",
    "today's record labelled version 1": f"$.cases[0].ppo: required key is missing (a version 1 record, read as "
    f"version {SCHEMA_VERSION})",
}


@pytest.mark.parametrize(("name", "change", "expected"), [pytest.param(n, c, e, id=n) for n, c, e in BROKEN])
def test_load_run_refuses_a_broken_copy_in_one_line(run, tmp_path, name, change, expected):
    broken = copy.deepcopy(run)
    change(broken)
    (tmp_path / RUN_FILE).write_text(json.dumps(broken))
    with pytest.raises(HarnessError) as caught:
        load_run(tmp_path)
    message = str(caught.value)
    assert LOAD_RUN_SAYS.get(name, expected) in message and message.startswith(str(tmp_path / RUN_FILE))
    assert "\n" not in message and len(message) < 300


def test_cli_rejects_a_broken_copy_with_one_line(run, tmp_path):
    broken = copy.deepcopy(run)
    _ok_run(broken)["iterations"][-1]["train_s"] = None
    (tmp_path / RUN_FILE).write_text(json.dumps(broken))
    proc = schema_cli(str(tmp_path))
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: ") and ".train_s: expected number, got null" in line and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("content", "expected"), [(None, "no run.json at"), ("{ half", "is not valid JSON")])
def test_missing_or_unreadable_run_is_one_line(tmp_path, content, expected):
    if content is not None:
        (tmp_path / RUN_FILE).write_text(content)
    with pytest.raises(HarnessError, match=expected):
        validate_run(tmp_path)
