"""`python -m harness export --tensorboard`: the events read back with TensorBoard's own reader agree with
run.json, recomputed here from the raw iteration records; bad input ends in one line and exit status 2."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import harness

# One real run, shared by every test: a throughput part (a vecenv case, a multiprocessing case under the overlap
# schedule, and a case whose env cannot be built, so one case run fails) and an included convergence part with
# two seeds, evaluated every iteration. Tiny budgets: 64 steps an iteration.
STEPS = 64
THROUGHPUT_SUITE = f"""
[suite]
name = "export-check"
include = ["learn.toml"]
[ppo]
steps_per_iteration = {STEPS}
epochs = 1
hidden_sizes = [32, 32]
[measure]
warmup_iterations = 1
iterations = 2
repeats = 1
[[cases]]
backend = "vecenv"
envs_per_worker = 2
[[cases]]
backend = "multiprocessing"
workers = 2
schedule = "overlap"
[[cases]]
backend = "vecenv"
label = "broken env"
env = {{ kwargs = {{ g = "not a number" }} }}
"""
CONVERGENCE_SUITE = f"""
[suite]
name = "learn"
[ppo]
steps_per_iteration = {STEPS}
epochs = 1
hidden_sizes = [32, 32]
[measure]
mode = "convergence"
seeds = [0, 1]
total_steps = {3 * STEPS}
eval_every = {STEPS}
eval_episodes = 1
final_eval_episodes = 1
[[cases]]
backend = "vecenv"
envs_per_worker = 2
"""
# What each case's streams are named, written out here rather than derived the way the export derives them.
EXPECTED_STREAMS = {
    "export-check/vecenv/w1xe2/repeat0",
    "export-check/multiprocessing overlap/w2xe1/repeat0",
    "learn/vecenv/w1xe2/seed0",
    "learn/vecenv/w1xe2/seed1",
}
PHASES = ("between_s", "sync_s", "collect_s", "train_s", "total_s")
REMOTE_ONLY = ("transfer_s", "dispatch_s", "worker_compute_s")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    suites = tmp_path_factory.mktemp("suites")
    (suites / "main.toml").write_text(THROUGHPUT_SUITE)
    (suites / "learn.toml").write_text(CONVERGENCE_SUITE)
    out = tmp_path_factory.mktemp("runs")
    proc = harness("run", str(suites / "main.toml"), "--out", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr  # 1: the broken case failed, as planned
    (found,) = [p for p in out.iterdir() if p.is_dir()]
    return found


@pytest.fixture(scope="module")
def run(run_dir) -> dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text())


@pytest.fixture(scope="module")
def exported(run_dir) -> tuple[Path, str]:
    """The export in its default place, and what the command printed."""
    proc = harness("export", "--tensorboard", str(run_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir / "tensorboard", proc.stdout


@pytest.fixture(scope="module")
def events(exported) -> dict[str, dict[str, list]]:
    return read_events(exported[0])


def read_events(root: Path) -> dict[str, dict[str, list]]:
    """stream (folder under root) -> tag -> ScalarEvents (wall_time, step, value), as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for folder in sorted({p.parent for p in root.rglob("events.out.tfevents.*")}):
        accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
        accumulator.Reload()
        out[folder.relative_to(root).as_posix()] = {tag: accumulator.Scalars(tag) for tag in accumulator.Tags()["scalars"]}
    return out


def ok_runs(run: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    """(case, case run, its stream's name) for every case run that finished."""
    out = []
    for case in run["cases"]:
        for result in case["runs"]:
            if result["status"] == "ok":
                which = f"seed{result['seed']}" if case["part"] == "learn" else f"repeat{result['repeat']}"
                out.append((case, result, f"{case['id']}/{which}"))
    return out


def origin(run: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(run["created"]).timestamp()


def expected_scalars(measured: list[tuple[int, dict[str, Any]]], start: float) -> dict[str, list[tuple[int, float, float]]]:
    """tag -> (step, wall time, value) of each measured iteration, from its record: FPS is steps over the
    iteration's wall time; every other figure is the record's own, where it is not null."""
    expected: dict[str, list[tuple[int, float, float]]] = {}
    for step, it in measured:
        values = {"throughput/fps": it["steps"] / it["total_s"]}
        values |= {f"time/{key}": it[key] for key in (*PHASES, *REMOTE_ONLY)}
        values |= {f"bytes/{key}": it[key] for key in ("sync_bytes", "transfer_bytes")}
        # The record says 0 network bytes in-process, where there was no broadcast at all: not a point.
        values |= {"bytes/sync_bytes_network": it["sync_bytes_network"] if it["sync_bytes"] is not None else None}
        values |= {"train/episode_return_mean": it["episode_return_mean"]}
        values |= {f"learner/{stat}": value for stat, value in it["learner"].items()}
        for tag, value in values.items():
            if value is not None:
                expected.setdefault(tag, []).append((step, start + it["train_wall_s"], value))
    return expected


def test_one_stream_per_finished_case_run(run, exported, events):
    statuses = [r["status"] for case in run["cases"] for r in case["runs"]]
    assert statuses.count("error") == 1 and statuses.count("ok") == len(EXPECTED_STREAMS)
    assert set(events) == EXPECTED_STREAMS == {name for _, _, name in ok_runs(run)}
    assert "4 case run(s); 1 failed case run(s) left out" in exported[1]
    assert not [p for p in exported[0].parent.iterdir() if ".partial" in p.name]  # the staging folder is gone


def test_iterations_match_run_json(run, events):
    for case, result, name in ok_runs(run):
        scalars = events[name]
        iterations = result["iterations"]
        cumulative = list(itertools.accumulate(it["steps"] for it in iterations))
        assert cumulative == [it["steps_trained"] for it in iterations]  # the learner saw every batch once
        measured = [(step, it) for step, it in zip(cumulative, iterations, strict=True) if not it["warmup"]]
        if case["part"] == "export-check":  # warm-up iteration 0 is left out: the first point is at two batches
            assert [step for step, _ in measured] == [2 * STEPS, 3 * STEPS]
        else:
            assert [step for step, _ in measured] == [STEPS, 2 * STEPS, 3 * STEPS]
        expected = expected_scalars(measured, origin(run))
        remote = case["backend"]["name"] == "multiprocessing"
        assert all((f"time/{key}" in expected) == remote for key in REMOTE_ONLY)
        assert ("bytes/transfer_bytes" in expected) == remote
        assert {"learner/policy_loss", "learner/approx_kl", "learner/entropy", "learner/gae_s"} <= set(expected)
        for tag, points in expected.items():
            got = scalars[tag]
            assert [e.step for e in got] == [p[0] for p in points], (name, tag)
            assert [e.wall_time for e in got] == pytest.approx([p[1] for p in points], abs=1e-6), (name, tag)
            assert [e.value for e in got] == pytest.approx([p[2] for p in points], rel=1e-6, abs=1e-12), (name, tag)
        # Nothing else per iteration, besides the lag and evaluations the tests below check.
        others = {t for t in scalars if t.startswith(("policy_lag/", "eval/"))}
        assert set(scalars) - others == set(expected), name


def test_evaluations_lie_at_the_env_steps_they_were_taken(run, events):
    learning = [(result, name) for case, result, name in ok_runs(run) if case["part"] == "learn"]
    assert len(learning) == 2
    for result, name in learning:
        got = events[name]["eval/mean_return"]
        assert [e.step for e in got] == [STEPS, 2 * STEPS, 3 * STEPS]  # eval_every = one iteration
        assert [e.value for e in got] == pytest.approx([ev["mean_return"] for ev in result["evaluations"]], rel=1e-6)
        assert [e.wall_time for e in got] == pytest.approx([origin(run) + ev["train_wall_s"] for ev in result["evaluations"]])
        (final,) = events[name]["eval/final_mean_return"]
        assert final.step == 3 * STEPS and final.value == pytest.approx(result["final_evaluation"]["mean_return"], rel=1e-6)
    assert all(not any(t.startswith("eval/") for t in events[name]) for case, _, name in ok_runs(run) if case["part"] != "learn")


def test_policy_lag_only_under_overlap(run, events):
    for case, result, name in ok_runs(run):
        lag_tags = {t for t in events[name] if t.startswith("policy_lag/")}
        if case["backend"]["schedule"] != "overlap":
            assert not lag_tags, name
            continue
        assert lag_tags == {f"policy_lag/{k}" for k in ("min", "mean", "max", "sgd_steps_min", "sgd_steps_mean", "sgd_steps_max")}
        measured = [it for it in result["iterations"] if not it["warmup"]]
        assert [e.value for e in events[name]["policy_lag/max"]] == [1.0] * len(measured)  # max_lag 1, past the first batch
        assert [e.value for e in events[name]["policy_lag/mean"]] == [it["policy_lag"]["mean"] for it in measured]
        assert [e.value for e in events[name]["policy_lag/sgd_steps_mean"]] == [
            it["policy_lag"]["sgd_steps_mean"] for it in measured
        ]


def assert_one_line_error(proc, needle: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr


def test_folder_without_run_json(tmp_path):
    assert_one_line_error(harness("export", "--tensorboard", str(tmp_path)), "no run.json")
    assert not any(tmp_path.iterdir())


def test_run_without_a_finished_case_run(run, tmp_path):
    failed = json.loads(json.dumps(run))
    for case in failed["cases"]:
        case["runs"] = [r for r in case["runs"] if r["status"] != "ok"]
    (tmp_path / "run.json").write_text(json.dumps(failed))
    assert_one_line_error(harness("export", "--tensorboard", str(tmp_path)), "no finished case run")
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_never_writes_into_earlier_output(run_dir, exported, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in exported[0].rglob("*")}
    assert_one_line_error(harness("export", "--tensorboard", str(run_dir)), "not an empty folder")
    assert {p: p.stat().st_mtime_ns for p in exported[0].rglob("*")} == before
    (tmp_path / "a file").write_text("")
    proc = harness("export", "--tensorboard", str(run_dir), "--out", str(tmp_path / "a file"))
    assert_one_line_error(proc, "not an empty folder")


def test_out_may_be_an_empty_folder_but_not_under_a_file(run_dir, events, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = harness("export", "--tensorboard", str(run_dir / "run.json"), "--out", str(empty))
    assert proc.returncode == 0, proc.stderr
    assert read_events(empty).keys() == events.keys()
    (tmp_path / "file").write_text("")
    proc = harness("export", "--tensorboard", str(run_dir), "--out", str(tmp_path / "file" / "tb"))
    assert_one_line_error(proc, "cannot write")
    shutil.rmtree(empty)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no staging folder left behind
