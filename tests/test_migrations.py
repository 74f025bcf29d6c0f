"""Old results stay readable: runs written by the last commit of every schema version
(tests/fixtures/runs/, see its README) load, render a report and compare with today's, each
`update_to_N` checked on its own fixture against the raw file, and what cannot be read refused in one line."""

from __future__ import annotations

import copy
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from backends.envs import EnvSpec
from harness import migrations
from harness.errors import HarnessError
from harness.migrations import (
    MEASURED_SINCE_3,
    update_to_2,
    update_to_3,
    update_to_4,
    update_to_5,
    update_to_6,
    update_to_7,
    update_to_8,
    update_to_9,
    update_to_10,
)
from harness.records import SCHEMA_VERSION
from harness.report import write_report
from harness.results import RUN_FILE, load_run
from tests.conftest import REPO

FIXTURES = REPO / "tests" / "fixtures" / "runs"
VERSIONS = range(1, SCHEMA_VERSION + 1)
SUITES = ("smoke", "convergence")
ALL = [(v, s) for v in VERSIONS for s in SUITES]


def fixture(version: int, suite: str) -> Path:
    return FIXTURES / f"v{version}" / suite / RUN_FILE


def raw(version: int, suite: str) -> dict[str, Any]:
    """The file as the old code wrote it (a fresh copy each time: the migrations must not need one)."""
    return json.loads(fixture(version, suite).read_text())


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=REPO, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """A user's mistake: exit 2 and one line `error: ...`, never a traceback."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: ")
    return line


def runs(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for case in record["cases"] for r in case["runs"]]


def iterations(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [it for r in runs(record) for it in r.get("iterations", [])]


def table(report: str, title: str) -> list[dict[str, str]]:
    """The rows of the markdown table under `### title`, as header -> cell."""
    lines = itertools.takewhile(lambda x: x.startswith("|"), report.split(f"### {title}\n", 1)[1].strip().splitlines())
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [dict(zip(rows[0], row, strict=True)) for row in rows[2:]]


# --- the fixtures are what they say -----------------------------------------------------------------


@pytest.mark.parametrize(("version", "suite"), ALL)
def test_fixture_is_a_whole_run_of_its_version(version, suite):
    run = raw(version, suite)
    assert run["schema_version"] == version and run["status"] == "complete" and run["commit"]["dirty"] is False
    assert all(r["status"] == "ok" for case in run["cases"] for r in case["runs"])


def test_every_version_before_today_has_a_step():
    """A new SCHEMA_VERSION needs its update_to_N, or the version before it could no longer be read."""
    assert sorted(migrations.MIGRATIONS) == list(range(migrations.OLDEST_VERSION + 1, SCHEMA_VERSION + 1))


# --- every version loads, renders and compares ----------------------------------------------------


@pytest.mark.parametrize(("version", "suite"), ALL)
def test_every_version_loads_and_renders_a_report(version, suite, tmp_path):
    shutil.copy(fixture(version, suite), tmp_path / RUN_FILE)
    before = (tmp_path / RUN_FILE).read_bytes()
    run = load_run(tmp_path)
    assert run["schema_version"] == SCHEMA_VERSION
    assert run.get("migrated_from") == (version if version < SCHEMA_VERSION else None)
    report = write_report(tmp_path).read_text()
    assert (tmp_path / RUN_FILE).read_bytes() == before  # read, never rewritten
    if version < SCHEMA_VERSION:
        assert f"- Record: results schema version {version}, read as version {SCHEMA_VERSION}" in report
    for caveat in run.get("caveats", []):
        assert f"- Not comparable with version {SCHEMA_VERSION} runs: {caveat}" in report


@pytest.mark.parametrize(("version", "suite"), [(v, s) for v, s in ALL if v < SCHEMA_VERSION])
def test_compare_with_todays_run_prints_what_is_not_comparable(version, suite):
    proc = cli("compare", str(fixture(version, suite)), str(fixture(SCHEMA_VERSION, suite)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    caveats = load_run(fixture(version, suite)).get("caveats", [])
    printed = [line for line in proc.stdout.splitlines() if line.startswith("not comparable: ")]
    assert printed == [f"not comparable: {c} (run A has results schema version {version})" for c in caveats]
    assert ("bytes: computed by formula" in proc.stdout) == (version <= 2)
    # Same suite, same settings: every case is compared, and none counts as differently configured.
    for case in raw(version, suite)["cases"]:
        assert case["id"] in proc.stdout
    assert "config differs" not in proc.stdout


def test_two_runs_of_one_old_version_share_their_caveats():
    """v1 and v2 both counted bytes by formula: between them only v1's own caveat is news."""
    proc = cli("compare", str(fixture(1, "smoke")), str(fixture(2, "smoke")))
    assert proc.returncode == 0, proc.stderr
    printed = [line for line in proc.stdout.splitlines() if line.startswith("not comparable: ")]
    assert len(printed) == 1 and printed[0].startswith("not comparable: start-up: version 1 did not time")


# --- "not recorded", never 0 -----------------------------------------------------------------------


def rendered(version: int, suite: str, tmp_path: Path) -> str:
    shutil.copy(fixture(version, suite), tmp_path / RUN_FILE)
    return write_report(tmp_path).read_text()


@pytest.mark.parametrize("version", VERSIONS)
def test_figures_an_old_version_did_not_measure_say_not_recorded(version, tmp_path):
    report = rendered(version, "smoke", tmp_path)
    speed = {row["Config"]: row for row in table(report, "Training speed")}
    communication = table(report, "Communication overhead")
    remote = speed["multiprocessing/worker · 2w×2e"]
    # Start-up counts building the learner since version 2: before, a number would be a smaller sum.
    assert (remote["Start-up (s, geometric mean)"] == "not recorded") == (version == 1)
    # Memory since version 4; in-process backends have no worker to measure, in any version.
    assert (remote["Memory per worker (MiB PSS, peak; mean)"] == "not recorded") == (version < 4)
    assert (remote["Memory in total (MiB PSS, peak; mean)"] == "not recorded") == (version < 4)
    assert speed["serial · 1 env"]["Memory per worker (MiB PSS, peak; mean)"] == "n/a: in-process"
    # Serialized bytes and the request dispatch since version 3 (a formula's bytes are not these figures).
    sync = next(r for r in communication if r["Type"] == "Weight sync" and r["Config"] == "multiprocessing/worker · 2w×2e")
    dispatch = [r for r in communication if r["Type"] == "Request dispatch" and r["Config"] == "multiprocessing/worker · 2w×2e"]
    assert (sync["Bytes serialized / iteration"] == "not recorded") == (version < 3)
    assert (dispatch[0]["Mean time (ms), mean of runs"] == "not recorded") == (version < 3)
    # The learner's time between iterations is on the clock since version 6.
    phases = {row["Config"]: row for row in table(report, "Where the time goes")}
    assert (phases["multiprocessing/worker · 2w×2e"]["Between %"] == "not recorded") == (version < 6)
    for row in [*speed.values(), *communication]:
        for cell in row.values():
            assert cell in ("not recorded", "n/a: in-process") or "not recorded" not in cell
    # Central inference sends no request to dispatch: no row, however old.
    assert not [r for r in communication if r["Type"] == "Request dispatch" and "central" in r["Config"]]


def test_todays_run_has_nothing_not_recorded(tmp_path):
    assert "not recorded" not in rendered(SCHEMA_VERSION, "smoke", tmp_path)


def test_seconds_to_threshold_of_version_1_come_from_its_own_timings(tmp_path):
    """Version 1 kept no train_wall_s, but every iteration's total_s: the convergence table's seconds are derived."""
    convergence = table(rendered(1, "convergence", tmp_path), "Convergence")
    assert all(row["Seconds to -1300 (median of seeds)"] not in ("not recorded", "not reached", "n/a") for row in convergence)


# --- each step, on its own fixture, against the raw file ------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_update_to_2_sums_the_two_learner_phases_and_moves_the_statistics(suite):
    old = raw(1, suite)
    new = update_to_2(old)
    assert old == raw(1, suite), "the caller's record is left as the file has it"
    assert new["schema_version"] == 2
    for before, after in zip(iterations(old), iterations(new), strict=True):
        assert after["train_s"] == before["gae_s"] + before["update_s"]
        assert after["total_s"] == before["total_s"] and after["sync_s"] == before["sync_s"]
        stats = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "gae_s", "update_s")
        assert after["learner"] == {k: before[k] for k in stats}
        assert not set(stats) & set(after)
    for case in new["cases"]:
        assert case["algorithm"] == {"name": "ppo", "device": "cpu"} and case["ppo"]["compile"] is False
        for run in case["runs"]:
            assert run["learner"] == {"name": "ppo", "device": "cpu"}  # no startup_s: version 1 did not time it
    assert new["not_recorded"] == ["$.cases[*].runs[*].learner.startup_s"]
    assert [c.split(":")[0] for c in new["caveats"]] == ["start-up"]


@pytest.mark.parametrize("suite", SUITES)
def test_update_to_3_keeps_formula_bytes_as_a_caveat_and_leaves_new_measurements_out(suite):
    old = raw(2, suite)
    new = update_to_3(old)
    assert new["schema_version"] == 3
    for case_old, case_new in zip(old["cases"], new["cases"], strict=True):
        backend = case_old["backend"]
        # In version 2 a policy copy left the learner's process only with worker inference in a process backend.
        in_process = backend["name"] in ("serial", "vecenv") or backend["inference"] == "central"
        for run_old, run_new in zip(case_old["runs"], case_new["runs"], strict=True):
            for before, after in zip(run_old["iterations"], run_new["iterations"], strict=True):
                assert after["sync_in_process"] is in_process
                assert after["sync_bytes"] == before["sync_bytes"] and after["transfer_bytes"] == before["transfer_bytes"]
                assert after["transfer_s"] == before["transfer_s"]
                assert not set(MEASURED_SINCE_3) & set(after)
                # A late version-2 file has these already: kept as recorded.
                assert after["train_wall_s"] == before["train_wall_s"] and after["policy_lag"] == before["policy_lag"]
    assert new["not_recorded"] == [f"$.cases[*].runs[*].iterations[*].{key}" for key in MEASURED_SINCE_3]
    assert [c.split(":")[0] for c in new["caveats"]][:2] == ["bytes", "transfer time"]
    assert new["caveats"][2].startswith("request dispatch, per-worker times and the measured env step cost: not recorded")


def test_update_to_3_derives_what_early_version_2_lacked_as_version_2_itself_recorded_it():
    """Files from before 3a81325 have no train_wall_s or policy_lag: derived from total_s, they must equal what the
    last version-2 code recorded for the same run."""
    old = raw(2, "convergence")
    early = copy.deepcopy(old)
    for case in early["cases"]:
        for key in ("schedule", "max_lag"):
            del case["backend"][key]
        for run in case["runs"]:
            for it in run["iterations"]:
                del it["train_wall_s"], it["policy_lag"]
            for evaluation in [*run["evaluations"], run["final_evaluation"]]:
                del evaluation["train_wall_s"]
    new = update_to_3(early)
    for case_old, case_new in zip(old["cases"], new["cases"], strict=True):
        assert case_new["backend"]["schedule"] == "sync" and case_new["backend"]["max_lag"] == 1
        for run_old, run_new in zip(case_old["runs"], case_new["runs"], strict=True):
            for before, after in zip(run_old["iterations"], run_new["iterations"], strict=True):
                assert after["train_wall_s"] == pytest.approx(before["train_wall_s"], rel=1e-12)
                assert after["policy_lag"] == before["policy_lag"] == {"min": 0, "mean": 0.0, "max": 0}
            for before, after in zip([*run_old["evaluations"], run_old["final_evaluation"]],
                                     [*run_new["evaluations"], run_new["final_evaluation"]], strict=True):  # fmt: skip
                assert after["train_wall_s"] == pytest.approx(before["train_wall_s"], rel=1e-12)


def test_version_1_gets_its_seconds_to_threshold_from_the_running_sum_of_total_s():
    old = raw(1, "convergence")
    new = update_to_3(update_to_2(old))
    for run_old, run_new in zip(runs(old), runs(new), strict=True):
        sums = list(itertools.accumulate(it["total_s"] for it in run_old["iterations"]))
        assert [it["train_wall_s"] for it in run_new["iterations"]] == pytest.approx(sums)
        by_steps = {it["steps_trained"]: total for it, total in zip(run_old["iterations"], sums, strict=True)}
        for evaluation in [*run_new["evaluations"], run_new["final_evaluation"]]:
            assert evaluation["train_wall_s"] == pytest.approx(by_steps[evaluation["steps"]])


@pytest.mark.parametrize("suite", SUITES)
def test_update_to_4_renames_env_options_and_changes_nothing_else(suite):
    old = raw(3, suite)
    new = update_to_4(old)
    for case_old, case_new in zip(old["cases"], new["cases"], strict=True):
        assert case_new["env"]["kwargs"] == case_old["env"]["options"] and "options" not in case_new["env"]
    # Undo the rename: the rest is the old file exactly.
    for case in new["cases"]:
        case["env"]["options"] = case["env"].pop("kwargs")
    assert new == old | {"schema_version": 4}


def test_update_to_4_names_a_missing_deadline_of_early_version_3_not_recorded(tmp_path):
    early = raw(3, "smoke")
    for part in early["parts"]:
        del part["measure"]["iteration_timeout_s"]  # as before 074f57b
    assert update_to_4(early)["not_recorded"] == ["$.parts[*].measure.iteration_timeout_s"]
    (tmp_path / RUN_FILE).write_text(json.dumps(early))
    assert "iteration_timeout_s" not in load_run(tmp_path)["parts"][0]["measure"]


@pytest.mark.parametrize("suite", SUITES)
def test_update_to_5_fills_the_constant_cost_model_and_leaves_the_sampling_split_unrecorded(suite):
    old = raw(4, suite)
    new = update_to_5(old)
    expected_env = {"step_cost_distribution": "constant", "step_cost_cv": 0.0, "slow_env_fraction": 0.0,
                    "slow_env_factor": 1.0, "reset_cost_ms": 0.0}  # fmt: skip
    for case_old, case_new in zip(old["cases"], new["cases"], strict=True):
        assert case_new["env"] == case_old["env"] | expected_env
        EnvSpec(**case_new["env"])  # what a version-4 cost meant is a valid cost model today
    assert "$.cases[*].runs[*].iterations[*].sample_env_s" in new["not_recorded"]
    assert all(case["torch_threads"] is None for case in new["cases"])
    for case in new["cases"]:
        for key in expected_env:
            del case["env"][key]
        del case["torch_threads"]
    assert new == old | {"schema_version": 5, "not_recorded": new["not_recorded"]}


@pytest.mark.parametrize("suite", SUITES)
def test_update_to_6_leaves_the_time_between_iterations_and_the_lag_in_sgd_steps_unrecorded(suite):
    """Version 5's total_s is its three phases: the time between iterations was off the clock, not 0."""
    old = raw(5, suite)
    new = update_to_6(old)
    lag = [f"$.cases[*].runs[*].iterations[*].policy_lag.sgd_steps_{k}" for k in ("min", "mean", "max")]
    assert new["not_recorded"] == ["$.cases[*].runs[*].iterations[*].between_s", *lag]
    overlap = any(case["backend"]["schedule"] == "overlap" for case in old["cases"])
    assert ("caveats" in new) == overlap
    assert all(case["ppo"]["target_kl"] is None for case in new["cases"])  # no KL early stopping then
    for case in new["cases"]:
        del case["ppo"]["target_kl"]
    assert new == old | {"schema_version": 6, "not_recorded": new["not_recorded"]} | (
        {"caveats": new["caveats"]} if overlap else {}
    )


@pytest.mark.parametrize("suite", SUITES)
def test_update_to_7_renames_the_learner_settings_and_nothing_else(suite):
    """A version-6 case's `ppo` table is its `hyperparameters`, key for key."""
    old = raw(6, suite)
    new = update_to_7(old)
    assert [c["hyperparameters"] for c in new["cases"]] == [c["ppo"] for c in old["cases"]]
    for case in new["cases"]:
        case["ppo"] = case.pop("hyperparameters")
    assert new == old | {"schema_version": 7}


@pytest.mark.parametrize("suite", SUITES)
def test_update_to_8_writes_the_network_as_its_layers_and_changes_nothing_else(suite):
    """A version-7 network was two tanh layers of `hidden_size`: `[w, w]` and tanh; weights were published once per
    update. The fixture (written at 9579fa8)
    predates `recompute_advantages`, which its PPO never did: false. Nothing else changes."""
    old = raw(7, suite)
    new = update_to_8(old)
    for before, after in zip(old["cases"], new["cases"], strict=True):
        width = before["hyperparameters"]["hidden_size"]
        assert after["hyperparameters"] == {k: v for k, v in before["hyperparameters"].items() if k != "hidden_size"} | {
            "hidden_sizes": [width, width], "activation": "tanh", "recompute_advantages": False,
        }  # fmt: skip
        after["hyperparameters"] = before["hyperparameters"]
        assert after["backend"] == before["backend"] | {"publish_every": "iteration", "publications_per_batch": 1}
        after["backend"] = before["backend"]
    assert new == old | {"schema_version": 8}


def test_update_to_8_fills_appos_clip_against_as_its_code_did():
    record = raw(7, "smoke")
    for case in record["cases"]:
        case["algorithm"]["name"] = "appo"
        case["hyperparameters"]["hidden_size"] = 64
    for case in update_to_8(record)["cases"]:
        settings = case["hyperparameters"]
        assert settings["clip_against"] == "proximal" and settings["hidden_sizes"] == [64, 64]
        assert "recompute_advantages" not in settings


@pytest.mark.parametrize("suite", SUITES)
def test_update_to_9_names_the_torch_kernel_and_changes_nothing_else(suite):
    """Every version-8 PPO and APPO update ran ATen's ops: `kernel` "torch". A `module:Class` learner is left as it was.
    Every learner trained with its case's `torch_threads`: `train_threads` null."""
    old = raw(8, suite)
    old["cases"][0]["algorithm"]["name"] = "my_pkg.learner:Mine"
    new = update_to_9(old)
    for index, (before, after) in enumerate(zip(old["cases"], new["cases"], strict=True)):
        filled = {} if index == 0 else {"kernel": "torch"}
        assert after["hyperparameters"] == before["hyperparameters"] | filled
        assert after.pop("train_threads") is None and "train_threads" not in before
        after["hyperparameters"] = before["hyperparameters"]
    assert new == old | {"schema_version": 9}


@pytest.mark.parametrize("suite", SUITES)
def test_update_to_10_says_no_ppo_update_averaged_its_weights_and_changes_nothing_else(suite):
    """No version-9 PPO update had PPO-EWMA's moving-average proximal policy: `ewma_decay` null, for PPO alone; every
    part's --quick kept three repeats and seeds: `quick_runs` 3."""
    old = raw(9, suite)
    old["cases"][0]["algorithm"]["name"] = "appo"
    new = update_to_10(old)
    for index, (before, after) in enumerate(zip(old["cases"], new["cases"], strict=True)):
        filled = {} if index == 0 else {"ewma_decay": None}
        assert after["hyperparameters"] == before["hyperparameters"] | filled and "ewma_decay" not in before["hyperparameters"]
        after["hyperparameters"] = before["hyperparameters"]
    for before, after in zip(old["parts"], new["parts"], strict=True):
        assert after["measure"] == before["measure"] | {"quick_runs": 3} and "quick_runs" not in before["measure"]
        after["measure"] = before["measure"]
    assert new == old | {"schema_version": 10}


def test_an_early_version_6_record_reads_with_its_meaning(tmp_path):
    """Version 6 gained `ppo.target_kl` partway: an early version-6 record lacks it and reads as null (no KL stop),
    what its code did; anything else it lacks is still refused."""
    early = raw(6, "smoke")
    for case in early["cases"]:
        del case["ppo"]["target_kl"]
    (tmp_path / RUN_FILE).write_text(json.dumps(early))
    loaded = load_run(tmp_path)
    assert all(c["hyperparameters"]["target_kl"] is None for c in loaded["cases"])
    assert "not_recorded" not in loaded and loaded["migrated_from"] == 6
    del early["cases"][0]["ppo"]["steps_per_iteration"]
    (tmp_path / RUN_FILE).write_text(json.dumps(early))
    with pytest.raises(HarnessError, match=r"cases\[0\]\.hyperparameters\.steps_per_iteration: required key is missing"):
        load_run(tmp_path)


def test_a_step_takes_only_the_version_before_it():
    with pytest.raises(ValueError, match="update_to_3 takes a version 2 record, got 1"):
        update_to_3(raw(1, "smoke"))


# --- what cannot be read: one line, exit 2 ----------------------------------------------------------


def test_future_version_is_refused_in_one_line(tmp_path):
    newer = raw(SCHEMA_VERSION, "smoke") | {"schema_version": 999}
    (tmp_path / RUN_FILE).write_text(json.dumps(newer))
    line = one_error_line(cli("report", str(tmp_path)))
    assert "schema version 999" in line and f"reads versions 1 to {SCHEMA_VERSION}" in line and "newer harness" in line


def test_old_record_damaged_beyond_migration_names_the_path_and_version(tmp_path):
    damaged = raw(1, "smoke")
    del damaged["cases"][2]["runs"][0]["iterations"][1]["gae_s"]
    (tmp_path / RUN_FILE).write_text(json.dumps(damaged))
    line = one_error_line(cli("compare", str(tmp_path), str(fixture(SCHEMA_VERSION, "smoke"))))
    assert "$.cases[2].runs[0].iterations[1].gae_s: required key is missing (a version 1 record" in line


@pytest.mark.parametrize(
    ("version", "damage", "expected"),
    [
        (1, lambda run: run["cases"][0]["runs"][0]["iterations"][0].update(update_s="slow"), "$.cases[0].runs[0].iterations[0].update_s: expected number, got string"),
        (2, lambda run: run.pop("machine"), "$.machine: required key is missing"),
        (2, lambda run: run["cases"][1]["runs"][0]["iterations"][0].pop("sync_bytes"), "$.cases[1].runs[0].iterations[0].sync_bytes: required key is missing"),
        (3, lambda run: run["cases"][0]["env"].pop("options"), "$.cases[0].env.options: required key is missing"),
        (3, lambda run: run["cases"][0]["runs"][0]["iterations"][0].pop("dispatch_s"), "$.cases[0].runs[0].iterations[0].dispatch_s: required key is missing"),
        # A learner's name that is no name (the fuzz test found it: update_to_8 looked it up, and raised TypeError).
        (7, lambda run: run["cases"][1]["algorithm"].update(name=[]), "$.cases[1].algorithm.name: expected string, got array"),
        (7, lambda run: run["cases"][0]["hyperparameters"].update(hidden_size="wide"), "$.cases[0].hyperparameters.hidden_size: expected number, got string"),
    ],
)  # fmt: skip
def test_damaged_old_record_fails_in_one_line(version, damage, expected, tmp_path):
    damaged = raw(version, "smoke")
    damage(damaged)
    (tmp_path / RUN_FILE).write_text(json.dumps(damaged))
    with pytest.raises(HarnessError) as caught:
        load_run(tmp_path)
    message = str(caught.value)
    assert expected in message and f"(a version {version} record, read as version {SCHEMA_VERSION})" in message
    assert "\n" not in message and len(message) < 300


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda run: run.update(cases=1), "$.cases: expected array, got integer"),
        (lambda run: run.update(cases=["0"]), "$.cases[0]: expected object, got string"),
        (lambda run: run["parts"][0]["tables"].__setitem__(0, ""), '$.parts[0].tables[0]: must be one of "speed"'),
    ],
)  # fmt: skip
def test_damaged_record_of_today_fails_in_one_line(damage, expected, tmp_path):
    """Found by the fuzz test: today's records pass through the report's table registry too."""
    damaged = raw(SCHEMA_VERSION, "smoke")
    damage(damaged)
    (tmp_path / RUN_FILE).write_text(json.dumps(damaged))
    with pytest.raises(HarnessError) as caught:
        load_run(tmp_path)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_only_a_migration_excuses_a_missing_key(tmp_path):
    """Today's record must have what the harness always writes, whatever its own `not_recorded` claims."""
    forged = raw(SCHEMA_VERSION, "smoke")
    del forged["cases"][2]["runs"][0]["iterations"][0]["dispatch_s"]
    forged["not_recorded"] = ["$.cases[*].runs[*].iterations[*].dispatch_s"]
    (tmp_path / RUN_FILE).write_text(json.dumps(forged))
    with pytest.raises(HarnessError, match=r"\$\.cases\[2\]\.runs\[0\]\.iterations\[0\]\.dispatch_s: required key is missing"):
        load_run(tmp_path)


def test_resume_of_an_older_version_is_refused_in_one_line(tmp_path):
    shutil.copy(fixture(1, "smoke"), tmp_path / RUN_FILE)
    before = (tmp_path / RUN_FILE).read_bytes()
    line = one_error_line(cli("run", "suites/smoke.toml", "--resume", str(tmp_path), "--force"))
    assert "cannot resume" in line and "schema version 1" in line and "from scratch" in line
    assert (tmp_path / RUN_FILE).read_bytes() == before
