"""End to end through the command line, as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from backends import REGISTRY
from harness.results import SCHEMA_VERSION, load_run
from tests.conftest import REPO


def harness(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)


def only_run_dir(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def run_suite_text(tmp_path: Path, text: str) -> tuple[Path, dict]:
    """Run a suite written here through the CLI; its folder and run.json, checked against the schema."""
    from harness.schema import validate_run

    suite = tmp_path / "suite.toml"
    suite.write_text(text)
    out = tmp_path / "out"
    proc = harness("run", str(suite), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = only_run_dir(out)
    validate_run(run_dir)
    return run_dir, load_run(run_dir)


RUNS = 9
"""suites/smoke.toml's case runs: one repeat of each of its nine cases."""


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke")
    proc = harness("run", "suites/smoke.toml", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (out / "stdout.txt").write_text(proc.stdout)  # what a CI log of the run shows (no terminal: a pipe)
    return only_run_dir(out)


def test_without_a_terminal_each_finished_run_is_one_log_line(smoke_run):
    """Piped (CI, nohup), a live display would print nothing until the end: one line per run instead, with its
    FPS as run.json gives it (steps over wall time of the measured iterations), elapsed time and time left."""
    import re

    run = load_run(smoke_run)
    lines = [line for line in (smoke_run.parent / "stdout.txt").read_text().splitlines() if line.startswith("[")]
    expected = [(case["id"], r) for case in run["cases"] for r in case["runs"]]
    assert len(lines) == len(expected) == RUNS
    for number, (line, (case_id, result)) in enumerate(zip(lines, expected, strict=True), start=1):
        measured = [it for it in result["iterations"] if not it["warmup"]]
        fps = sum(it["steps"] for it in measured) / sum(it["total_s"] for it in measured)
        match = re.fullmatch(
            rf"\[{number}/{RUNS}\] {re.escape(case_id)} seed 0 rep 0: ok, ([\d,]+) FPS · (\d+):(\d\d) elapsed, (.*)", line
        )
        assert match, line
        assert int(match[1].replace(",", "")) == round(fps)
        assert match[4] == ("done" if number == RUNS else re.fullmatch(r"~\d+:\d\d left", match[4]) and match[4])


def test_smoke_suite_writes_run_json_and_report(smoke_run):
    run = load_run(smoke_run)
    assert run["schema_version"] == SCHEMA_VERSION and run["status"] == "complete"
    assert run["machine"]["logical_cores"] >= 1 and "torch" in run["packages"]
    assert "id" in run["commit"] and len(run["suite"]["sha256"]) == 64
    backends = {(c["backend"]["name"], c["backend"]["inference"]) for c in run["cases"]}
    assert backends == {("serial", "worker"), ("vecenv", "worker"), ("gym_async", "central"), ("sb3_subproc", "central"),
                        ("envpool", "central"), ("multiprocessing", "worker"), ("multiprocessing", "central"),
                        ("ray_local", "worker"), ("ray_local", "central")}  # fmt: skip
    for case in run["cases"]:
        (result,) = case["runs"]
        assert result["status"] == "ok", result.get("error")
        measured = [it for it in result["iterations"] if not it["warmup"]]
        assert len(measured) == 2 and all(it["steps"] == 512 for it in measured)
        assert all(it["collect_s"] > 0 and it["train_s"] > 0 for it in measured)
        assert all(it["learner"]["update_s"] > 0 and "approx_kl" in it["learner"] for it in measured)
        assert result["resources"]["samples"] >= 1 and result["resources"]["gpu_present"] in (True, False)
        remote = REGISTRY[case["backend"]["name"]].remote
        assert (measured[0]["transfer_bytes"] is not None) == remote
    report = (smoke_run / "report.md").read_text()
    assert "| Config" in report and "FPS (steps/s), geometric mean of repeats" in report and "Speedup" in report
    assert "### Where the time goes" in report and "### Communication overhead" in report
    machine = run["machine"]  # the header names this run's machine, from run.json
    assert (
        f"- Machine: {machine['cpu_model']}, {machine['physical_cores']} physical / {machine['logical_cores']} logical cores"
        in report
    )
    assert (smoke_run / "plots" / "smoke-breakdown.png").stat().st_size > 1000


def test_report_is_rebuilt_from_run_json_alone(smoke_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(smoke_run, copy)
    original = (copy / "report.md").read_text()
    (copy / "report.md").unlink()
    shutil.rmtree(copy / "plots")
    shutil.rmtree(copy / "logs")
    proc = harness("report", str(copy))
    assert proc.returncode == 0, proc.stderr
    assert (copy / "report.md").read_text() == original
    assert (copy / "plots" / "smoke-breakdown.png").exists()


def test_report_in_chinese_uses_the_reports_headers(smoke_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(smoke_run, copy)
    assert harness("report", str(copy), "--lang", "zh").returncode == 0
    text = (copy / "report.zh.md").read_text()
    # The report's own words; FPS names our estimator (a geometric mean), not the report's "平均" (mean).
    for header in (
        "配置",
        "工作器数量",
        "FPS（步/秒）, 重复运行的几何平均",
        "相对加速比",
        "通信类型",
        "平均时间（毫秒）",
        "占总时间比例",
    ):
        assert header in text


def test_compare_one_repeat_says_it_cannot_test(smoke_run):
    proc = harness("compare", str(smoke_run), str(smoke_run))
    assert proc.returncode == 0, proc.stderr
    assert "1.000" in proc.stdout and "too few repeats" in proc.stdout


def _with_repeats(run: dict, scale: dict[str, float]) -> dict:
    """Each case's one run as three repeats, 2% apart, its iteration times multiplied by scale[case id] (default 1)."""
    out = json.loads(json.dumps(run))
    for case in out["cases"]:
        (result,) = case["runs"]
        case["runs"] = []
        for jitter in (1.0, 1.02, 0.98):
            copy = json.loads(json.dumps(result))
            for it in copy["iterations"]:
                it["total_s"] *= jitter * scale.get(case["id"], 1.0)
            case["runs"].append(copy)
    return out


def test_compare_tests_the_change_and_warns_on_different_configs(smoke_run, tmp_path):
    run = load_run(smoke_run)
    ids = [c["id"] for c in run["cases"]]
    faster, same, reconfigured = ids[0], ids[1], ids[2]
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "run.json").write_text(json.dumps(_with_repeats(run, {})))
    changed = _with_repeats(run, {faster: 0.5, same: 1.01})
    next(c for c in changed["cases"] if c["id"] == reconfigured)["hyperparameters"]["learning_rate"] = 0.01
    (b / "run.json").write_text(json.dumps(changed))
    proc = harness("compare", str(a), str(b))
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert "2.000" in rows[faster] and "faster (p=" in rows[faster]
    assert "no significant change" in rows[same] or "under 5%" in rows[same]
    assert f"{reconfigured} (config differs)" in rows
    assert "share a name but not their configuration" in proc.stdout


def test_failed_case_is_recorded_and_others_kept(tmp_path):
    suite = tmp_path / "mixed.toml"
    suite.write_text("""
[suite]
name = "mixed"
[ppo]
steps_per_iteration = 64
epochs = 1
[measure]
warmup_iterations = 0
iterations = 1
repeats = 1
[[cases]]
backend = "vecenv"
envs_per_worker = 2
[[cases]]
backend = "multiprocessing"
workers = 2
label = "broken env"
env = { kwargs = { g = "not a number" } }
""")
    out = tmp_path / "out"
    proc = harness("run", str(suite), "--out", str(out))
    assert proc.returncode == 1
    assert "1 run(s) failed" in proc.stdout
    run = load_run(only_run_dir(out))
    good, bad = (case["runs"][0] for case in run["cases"])
    assert good["status"] == "ok" and len(good["iterations"]) == 1
    assert bad["status"] == "error" and bad["error"].startswith("WorkerError: worker ") and "TypeError" in bad["error"]
    assert "pendulum.py" in bad["traceback"]
    assert "1 run(s) failed" in (only_run_dir(out) / "report.md").read_text()


def test_list_names_backends_suites_and_presets():
    proc = harness("list")
    assert proc.returncode == 0
    for word in ("ray_local", "ray_cluster", "multiprocessing", "scaling", "smoke", "tuned"):
        assert word in proc.stdout


def test_report_of_missing_run_is_one_line(tmp_path):
    proc = harness("report", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.startswith("error: no run.json") and "Traceback" not in proc.stderr


def test_results_schema_version_is_checked(tmp_path):
    """Versions 1 to today's are read (tests/test_migrations.py); a newer one is refused in one line."""
    (tmp_path / "run.json").write_text(json.dumps({"schema_version": 999}))
    proc = harness("report", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: ") and "schema version 999" in line and f"reads versions 1 to {SCHEMA_VERSION}" in line


def test_log_lines_estimate_the_time_left_from_the_runs_so_far():
    import io

    from rich.console import Console

    from harness.progress import LineProgress

    now = [100.0]
    out = io.StringIO()
    progress = LineProgress(Console(file=out, width=200), jobs=4, clock=lambda: now[0])
    iteration = {"warmup": False, "steps": 1000, "total_s": 0.5}
    now[0] = 130.0  # 30 s for the first run: 3 left at 30 s each
    warmup = {"warmup": True, "steps": 1000, "total_s": 5.0}  # slow, and left out of the FPS: 2,000, not 364
    progress.finished("a seed 0 rep 0", {"status": "ok", "iterations": [warmup, iteration]})
    now[0] = 190.0  # 90 s for two: 2 left at 45 s each
    progress.finished("b seed 0 rep 0", {"status": "error", "error": "boom", "iterations": []})
    assert out.getvalue().splitlines() == [
        "[1/4] a seed 0 rep 0: ok, 2,000 FPS · 0:30 elapsed, ~1:30 left",
        "[2/4] b seed 0 rep 0: error · 1:30 elapsed, ~1:30 left",
    ]


def test_a_quick_runs_header_says_what_quick_cut():
    from harness.report import machine_header
    from harness.suite import load_suite

    run = load_run(REPO / "tests" / "fixtures" / "runs" / "v4" / "smoke")
    cuts = load_suite(REPO / "suites" / "report.toml").quick_cuts()
    header = machine_header(run | {"quick": True, "quick_cuts": list(cuts)})
    assert "**--quick**" in header[-1 - len(cuts)]
    assert header[-len(cuts) :] == [f"- Quick look, {line}" for line in cuts]
    assert any("convergence-tuned: left out" in line for line in header)
