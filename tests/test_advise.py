"""`harness advise`: the cost model's equations against hand-computed cases, its straggler estimate against
scipy's expected maximum of normals, the target's and the CLI's refusals, a real run on a small budget, and
(marked slow) the recommendation against a brute-force sweep of the same search space on an env defined here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import integrate, stats

from harness.advise.model import Config, Hardware, expected_max_of_sums, predict
from harness.advise.profile import CentralProfile, EnvProfile, Line, Profile, RemoteProfile
from harness.advise.search import STOPS_PAYING, project
from harness.advise.target import parse_target
from harness.cli import main
from harness.errors import HarnessError


def make_profile(cpu_fraction: float = 1.0, samples: tuple[float, ...] = (1e-3,), cpu_slope: float = 0.0) -> Profile:
    """Round numbers, so that every prediction below can be worked out by hand: S = 1024 steps, a 1 ms step,
    a 0.1 ms policy call at batch 1 (0.16 ms at 4, 1 ms at 64), a 0.25 s update."""
    env = EnvProfile(step_mean_s=float(np.mean(samples)), step_cv=0.0, step_p99_s=max(samples), cpu_fraction=cpu_fraction,
                     reset_mean_s=0.0, episode_length_mean=None, obs_dim=3, act_dim=1, obs_bytes=12, step_samples_s=samples)  # fmt: skip
    # The CPU one env step costs outside the learner: the env's own CPU, plus (worker inference) the one-env policy
    # call and loop; flat in the worker count unless `cpu_slope` says otherwise.
    remote = RemoteProfile(startup_s=Line(1.0, 0.0), sync_s=Line(1e-3, 1e-4), sync_nowait_s=Line(1e-4, 0.0),
                           round_s=Line(2e-3, 5e-4), sync_bytes=250_000, worker_mib=50.0, worker_loop_s=2e-5,
                           transfer_per_step_s=1e-6, transfer_bytes_per_step=40.0,
                           cpu_per_step_s=Line(1e-3 * cpu_fraction + 1.2e-4, cpu_slope))  # fmt: skip
    central = CentralProfile(overhead_s=Line(1e-4, 5e-5), startup_s=0.2, process_mib=10.0,
                             cpu_per_step_s=Line(1e-3 * cpu_fraction, 0.0))  # fmt: skip
    return Profile(env_spec={"id": "Pendulum-v1"}, preset="report", steps_per_iteration=1024, usable_cpus=2.0, env=env,
                   inference_s={1: 1e-4, 4: 1.6e-4, 64: 1e-3}, serial_loop_s=1e-5, vecenv_loop_s=Line(2e-5, 1e-5),
                   train_s=0.25, weights_bytes=250_000, remote={"multiprocessing": remote},
                   central={"gym_async": central, "multiprocessing": central}, envpool_step_s=Line(1e-4, 1e-5),
                   probe_seconds={})  # fmt: skip


HERE = Hardware(cores=2)


@pytest.mark.parametrize(
    ("config", "cpu_fraction", "iteration_s"),
    [
        # serial: 1024 x (1 ms env + 0.1 ms policy + 0.01 ms loop) + 0.25 s update
        (Config("serial"), 1.0, 1024 * 1.11e-3 + 0.25),
        # vecenv 4 envs: 256 vector steps x (4 ms env + 0.16 ms policy + (0.02 + 4 x 0.01) ms loop) + update
        (Config("vecenv", 1, 4), 1.0, 256 * (4e-3 + 1.6e-4 + 6e-5) + 0.25),
        # envpool 4 envs: 256 x (its own step 0.1 + 4 x 0.01 ms + 0.16 ms policy) + update
        (Config("envpool", 1, 4, "central"), 1.0, 256 * (1.4e-4 + 1.6e-4) + 0.25),
        # 4 busy workers on 2 cores: each fragment is 256 x (1 + 0.1 + 0.02) ms = 0.28672 s of CPU; four of them
        # need 2 x 0.28672 s of the two cores; + round(4) 4 ms + 1024 x 1 us transfer + broadcast(4) 1.4 ms + update
        (Config("multiprocessing", 4, 1, "worker", "sync"), 1.0, 2 * 0.28672 + 4e-3 + 1.024e-3 + 1.4e-3 + 0.25),
        # the same env asleep: only 256 x 0.12 ms of each fragment is CPU, so the slowest fragment (0.28672 s) decides
        (Config("multiprocessing", 4, 1, "worker", "sync"), 0.0, 0.28672 + 4e-3 + 1.024e-3 + 1.4e-3 + 0.25),
        # overlap, asleep: sampling (0.28672 + 5.024 ms) is longer than the update, and the cores hold both
        # ((4 x 0.03072 + 0.25) / 2 = 0.18644 s); + the weights handed over without waiting, 0.1 ms
        (Config("multiprocessing", 4, 1, "worker", "overlap"), 0.0, 0.28672 + 5.024e-3 + 1e-4),
        # overlap, busy: the cores must run four fragments and the update: (4 x 0.28672 + 0.25) / 2, + round + handover
        (Config("multiprocessing", 4, 1, "worker", "overlap"), 1.0, (4 * 0.28672 + 0.25) / 2 + 5.024e-3 + 1e-4),
        # AsyncVectorEnv, 4 busy env processes on 2 cores: each step 4 x 1 ms of CPU over 2 cores = 2 ms, then
        # transport (0.1 + 4 x 0.05 ms) and the policy at batch 4 (0.16 ms); 256 steps, + update
        (Config("gym_async", 1, 4, "central"), 1.0, 256 * (2e-3 + 3e-4 + 1.6e-4) + 0.25),
        # multiprocessing central, 2 workers x 2 envs, asleep: each step waits 2 x 1 ms (a worker's envs in turn)
        (Config("multiprocessing", 2, 2, "central"), 0.0, 256 * (2e-3 + 2e-4 + 1.6e-4) + 0.25),
    ],
)
def test_iteration_time_matches_the_hand_computed_case(config: Config, cpu_fraction: float, iteration_s: float) -> None:
    prediction = predict(make_profile(cpu_fraction), config, HERE)
    assert prediction.iteration_s == pytest.approx(iteration_s, rel=1e-9)
    assert prediction.fps == pytest.approx(1024 / iteration_s, rel=1e-9)
    assert sum(prediction.terms.values()) == pytest.approx(prediction.iteration_s, rel=1e-12)


def test_cpu_per_step_grows_with_the_workers_as_measured() -> None:
    """With 20 us more CPU per step for each worker per core, 4 busy workers on 2 cores cost 256 x 1.16 ms each;
    the cores need 2 x 0.29696 s for them, against 0.28672 s for the slowest fragment alone. On 8 cores the same
    workers cost 256 x 1.13 ms each, but fit: the slowest fragment decides."""
    prediction = predict(make_profile(1.0, cpu_slope=2e-5), Config("multiprocessing", 4, 1), HERE)
    assert prediction.iteration_s == pytest.approx(2 * 256 * 1.16e-3 + 4e-3 + 1.024e-3 + 1.4e-3 + 0.25)
    assert prediction.terms["contention"] == pytest.approx(2 * 256 * 1.16e-3 - 0.28672)
    roomy = predict(make_profile(1.0, cpu_slope=2e-5), Config("multiprocessing", 4, 1), Hardware(8))
    assert roomy.terms["contention"] == 0.0
    assert roomy.iteration_s == pytest.approx(0.28672 + 4e-3 + 1.024e-3 + 1.4e-3 + 0.25)


def test_dominant_term_names_the_largest_part() -> None:
    busy = predict(make_profile(1.0), Config("multiprocessing", 4, 1), HERE)
    assert busy.terms["contention"] == pytest.approx(0.28672)  # the second fragment's worth of waiting for a core
    assert busy.dominant == "contention"
    sampling_bound = predict(make_profile(0.0), Config("multiprocessing", 4, 1, "worker", "overlap"), Hardware(64))
    assert sampling_bound.dominant == "env"  # 0.256 s of sleeping env, longer than the 0.25 s update it hides


def test_network_terms_use_the_given_bandwidth_and_latency() -> None:
    """Two nodes of 2 cores, 4 busy workers (2 per node), 8 Gbit/s = 1e9 bytes/s, 1 ms latency: the weights
    (250,000 bytes) to the other node, half the batch's 1024 x 40 bytes back, and one latency each way."""
    machine = Hardware(cores=2, nodes=2, bandwidth_gbps=8, latency_ms=1)
    prediction = predict(make_profile(1.0), Config("multiprocessing", 4, 1), machine)
    network = 250_000 / 1e9 + 0.5 * 1024 * 40 / 1e9 + 2e-3
    assert prediction.terms["network"] == pytest.approx(network)
    # two workers per node fit their two cores: no contention
    assert prediction.iteration_s == pytest.approx(0.28672 + 5.024e-3 + 1.4e-3 + 0.25 + network)
    assert prediction.assumptions == ()
    assumed = predict(make_profile(1.0), Config("multiprocessing", 4, 1), Hardware(cores=2, nodes=2))
    assert any("bandwidth 10 Gbit/s assumed" in note for note in assumed.assumptions)
    assert any("latency 0.2 ms assumed" in note for note in assumed.assumptions)


def test_inference_interpolates_between_batches_and_extends_the_last_slope() -> None:
    profile = make_profile()
    assert profile.inference_at(2) == pytest.approx(1e-4 + (1.6e-4 - 1e-4) / 3)
    assert profile.inference_at(128) == pytest.approx(1e-3 + 64 * (1e-3 - 1.6e-4) / 60)


def test_slowest_of_few_steps_matches_the_exact_expectation() -> None:
    """Steps of 0 or 2 ms, equally likely: the slowest of k single steps is 2 ms unless all are 0, so its
    expectation is 2 (1 - 2^-k) ms."""
    env = make_profile(samples=(0.0, 2e-3)).env
    for groups in (2, 4):
        exact = 2e-3 * (1 - 0.5**groups)
        assert expected_max_of_sums(env, groups, 1, steps=1) == pytest.approx(exact, rel=0.1)
    assert expected_max_of_sums(env, 1, 1, steps=10) == pytest.approx(10e-3)


def test_slowest_of_long_fragments_matches_scipys_expected_maximum_of_normals() -> None:
    """A fragment of 100 such steps is nearly normal (mean 0.1 s, sd 0.01 s); the slowest of 8 is the mean plus
    sd times the expected maximum of 8 standard normals, integrated here with scipy."""
    env = make_profile(samples=(0.0, 2e-3)).env
    k = 8
    e_max, _ = integrate.quad(lambda x: x * k * stats.norm.pdf(x) * stats.norm.cdf(x) ** (k - 1), -10, 10)
    assert e_max == pytest.approx(1.4236, abs=1e-3)
    assert expected_max_of_sums(env, k, 1, steps=100) == pytest.approx(0.1 + 0.01 * e_max, abs=1.5e-3)


def test_line_through_probe_points_is_least_squares_and_never_negative() -> None:
    assert Line.through([1, 2, 4], [2, 3, 5]) == Line(pytest.approx(1.0), pytest.approx(1.0))
    slope, intercept = np.polyfit([1, 2, 4], [1.5, 2.6, 4.3], 1)
    fitted = Line.through([1, 2, 4], [1.5, 2.6, 4.3])
    assert (fitted.intercept, fitted.slope) == (pytest.approx(intercept), pytest.approx(slope))
    # a fit whose intercept would be negative stays through the points' mean, from zero
    clamped = Line.through([1, 2, 4], [1, 3, 7])
    assert clamped.intercept == 0 and clamped.slope == pytest.approx((11 / 3) / (7 / 3))
    assert Line.through([1, 2], [3e-3, 2e-3]).slope == 0.0  # no cost falls as workers are added


def test_projection_stops_paying_where_doubling_gains_under_five_percent() -> None:
    projection = project(make_profile(0.0), Hardware(cores=64))
    for schedule, knee in projection.stops_paying.items():
        fps = {r.workers: r.prediction.fps for r in projection.rows if r.schedule == schedule}
        counts = sorted(fps)
        for smaller, larger in zip(counts, counts[1:], strict=False):
            if smaller < knee:
                assert fps[larger] >= STOPS_PAYING * fps[smaller]
        if knee != counts[-1]:
            assert fps[2 * knee] < STOPS_PAYING * fps[knee]
    serial = predict(make_profile(0.0), Config("serial"), Hardware(cores=64)).fps
    for row in projection.rows:
        assert row.speedup == pytest.approx(row.prediction.fps / serial)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cores=64,gpus=2", "no key 'gpus'"),
        ("cores=0", "cores must be a positive number"),
        ("cores=64,nodes=1.5", "nodes must be a whole number"),
        ("cores=-3", "positive"),
        ("cores=nan", "positive"),
        ("nodes=4", "needs cores"),
        ("cores=64,cores=32", "twice"),
        ("cores", "not key=value"),
        ("cores=many", "not a number"),
    ],
)
def test_target_refuses_bad_descriptions_in_one_line(text: str, message: str) -> None:
    with pytest.raises(HarnessError, match=message) as caught:
        parse_target(text)
    assert "\n" not in str(caught.value)


def test_target_reads_a_full_description() -> None:
    assert parse_target("cores=64,nodes=4,bandwidth_gbps=10,latency_ms=0.2") == Hardware(64, 4, 10, 0.2)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--env", "Pendulum-v1", "--kwargs", "{not json"], "--kwargs is not JSON"),
        (["--env", "Pendulum-v1", "--kwargs", "[1, 2]"], "must be a JSON object"),
        (["--env", "NoSuchEnv-v9"], "NoSuchEnv-v9"),
        (["--env", "Pendulum-v1", "--kwargs", '{"no_such_kwarg": 1}'], "no_such_kwarg"),
        (["--env", "tests.custom_envs:PixelWalk"], "not supported"),
        (["--env", "Pendulum-v1", "--target", "cores=64,gpus=1"], "no key 'gpus'"),
        (["--env", "Pendulum-v1", "--target", "cores=0"], "positive"),
        (["--env", "Pendulum-v1", "--backends", "vecenv,warp_drive"], "unknown backend 'warp_drive'"),
        (["--env", "Pendulum-v1", "--backends", "ray_cluster"], "existing cluster"),
        (["--env", "Pendulum-v1", "--preset", "fastest"], "unknown preset 'fastest'"),
        (["--env", "Pendulum-v1", "--budget-minutes", "-1"], "positive number of minutes"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_anything_runs(extra: list[str], message: str, tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "results"
    assert main(["advise", *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()  # nothing ran


def test_a_budget_too_small_to_validate_says_so_and_still_recommends(tmp_path, capsys) -> None:  # noqa: ANN001
    assert (
        main(["advise", "--env", "Pendulum-v1", "--backends", "vecenv", "--budget-minutes", "0.2", "--out", str(tmp_path)]) == 0
    )
    (run_dir,) = tmp_path.glob("advise-*")
    record = json.loads((run_dir / "run.json").read_text())
    assert record["kind"] == "advise" and record["status"] == "complete"
    assert record["validation"]["validated"] is False
    assert "not validated" in record["validation"]["reason"] and "--budget-minutes" in record["validation"]["reason"]
    assert record["recommendation"]["by"] == "model"
    labels = [p["label"] for p in record["predictions"]]
    assert "serial 1x1" in labels and any(label.startswith("vecenv") for label in labels)
    assert all(not label.startswith(("multiprocessing", "ray")) for label in labels)  # --backends kept them out
    assert "worker backends" not in record.get("projection_note", "") or "projection_here" not in record
    # every predicted figure is derivable: the terms add up to the iteration, FPS is steps over it
    steps = record["profile"]["steps_per_iteration"]
    for p in record["predictions"]:
        assert sum(p["terms"].values()) == pytest.approx(p["iteration_s"])
        assert p["fps"] == pytest.approx(steps / p["iteration_s"])
    report = (run_dir / "report.md").read_text()
    assert "**Not validated**" in report and "## Profile" in report
    # the profile's env step is what the env costs: Pendulum's physics is microseconds, all CPU
    env = record["profile"]["env"]
    assert 0 < env["step_mean_s"] < 1e-3 and env["cpu_fraction"] > 0.5
    assert env["obs_dim"] == 3 and env["act_dim"] == 1
    (run_dir / "report.md").unlink()
    assert main(["report", str(run_dir)]) == 0  # re-rendered from run.json alone
    assert (run_dir / "report.md").read_text() == report
    # the rest of the machine, read as advise started: the report warns past a quarter of the usable CPUs
    assert record["busy_elsewhere_cores"] >= 0
    usable = record["machine"]["usable_cpus"]
    for busy, warned in ((0.24 * usable, False), (0.26 * usable, True)):
        (run_dir / "run.json").write_text(json.dumps({**record, "busy_elsewhere_cores": busy}))
        assert main(["report", str(run_dir)]) == 0
        assert ("The machine was busy when advise started" in (run_dir / "report.md").read_text()) is warned, busy


@pytest.mark.slow
def test_recommendation_is_within_10_percent_of_a_brute_force_sweeps_best(tmp_path) -> None:  # noqa: ANN001
    """On an env the model was not developed on (a 0.5 ms busy step with lognormal spread, by entry point), the
    configuration advise recommends runs within 10% of the fastest configuration of its own search space, every
    configuration of which a brute-force sweep measures in the same way. It times configurations against each
    other, so tox runs it alone, after the other tests (tox.ini)."""
    from backends.envs import EnvSpec
    from harness.advise.model import Prediction
    from harness.advise.validate import run_validation, validation_suite
    from harness.machine import busy_cores_elsewhere

    # Other processes on the cores (CI's loaded run spins two) take a share that changes with how many
    # processes each configuration starts, which neither advise nor the sweep can hold still.
    _skip_when_busy(busy_cores_elsewhere(2.0))
    env, kwargs = "tests.custom_envs:BusyPendulum", {"max_episode_steps": 200}
    argv = ["advise", "--env", env, "--kwargs", json.dumps(kwargs), "--preset", "cartpole", "--backends",
            "multiprocessing", "--max-envs", "4", "--budget-minutes", "4", "--out", str(tmp_path / "advise")]  # fmt: skip
    assert main(argv) == 0
    (run_dir,) = (tmp_path / "advise").glob("advise-*")
    record = json.loads((run_dir / "run.json").read_text())
    _skip_when_busy(record["busy_elsewhere_cores"])
    assert record["validation"]["validated"], record["validation"]
    recommended = record["recommendation"]["label"]
    configs = [Config(**p["config"]) for p in record["predictions"]]
    assert len(configs) == 10  # the whole space: serial; multiprocessing 2x1, 2x2, 4x1 x (worker sync, overlap, central)
    as_predictions = [Prediction(c, 1.0, 1.0, {}) for c in configs]
    ordered = sorted(as_predictions, key=lambda p: p.config.backend != "serial")  # serial first: the suite's baseline
    suite = validation_suite(env, kwargs, "cartpole", ordered, repeats=2)
    assert sorted(c.label for c in suite.cases) == sorted(c.label for c in configs)  # every configuration, once
    assert all(c.env == EnvSpec(env, kwargs) and c.backend.options == {} for c in suite.cases)
    _, measured = run_validation(suite, ordered, tmp_path / "sweep", _quiet_console(), case_timeout_s=300)
    fps = {v.config.label: v.measured_fps for v in measured}
    assert all(value for value in fps.values()), fps
    best = max(fps, key=lambda label: fps[label])
    print(f"brute force, steps/s: {fps}; advise recommended {recommended}")
    assert fps[recommended] >= 0.9 * fps[best], (recommended, fps[recommended], best, fps[best])
    assert math.isfinite(fps[best])


def _skip_when_busy(elsewhere: float) -> None:
    if elsewhere > 0.5:
        pytest.skip(f"other processes keep {elsewhere:.1f} cores busy: this check times configurations against each "
                    "other and needs the machine to itself")  # fmt: skip


def _quiet_console():  # noqa: ANN202
    from rich.console import Console

    return Console(quiet=True)


def test_study_sets_each_prediction_beside_the_measured_fps(tmp_path) -> None:  # noqa: ANN001
    """The study's arithmetic on a recorded run (the v5 smoke fixture) with a profile put where the study looks,
    so nothing is measured: each cell's measured FPS is the case's geometric mean, its prediction the model's for
    that configuration on the run's CPUs, its error their ratio less one, and the summary numpy's median and max.
    The 16-core reference's cells are speedups over the model's serial on 16 cores."""
    import dataclasses
    import shutil
    from pathlib import Path

    from algorithms.config import PRESETS
    from backends.envs import EnvSpec
    from harness.advise import study
    from harness.analysis import run_stats
    from harness.results import load_run

    run_dir = tmp_path / "smoke"
    shutil.copytree(Path(__file__).parent / "fixtures" / "runs" / "v5" / "smoke", run_dir)
    run = load_run(run_dir)
    base = make_profile(0.3)
    parts = {"remote": {n: base.remote["multiprocessing"] for n in ("multiprocessing", "ray_local")},
             "central": {n: base.central["gym_async"] for n in ("gym_async", "sb3_subproc", "multiprocessing", "ray_local")}}  # fmt: skip
    profiles = tmp_path / "out" / "profiles"
    profiles.mkdir(parents=True)
    case = run["cases"][0]
    smoke_profile = dataclasses.replace(base, steps_per_iteration=case["hyperparameters"]["steps_per_iteration"], **parts)
    assert all(c["env"] == case["env"] and c["hyperparameters"] == case["hyperparameters"] for c in run["cases"])
    (profiles / f"profile-{study._profile_key(case['env'], case['hyperparameters'], case['algorithm']['name'])}.json").write_text(
        json.dumps(smoke_profile.to_json())
    )
    reference_profile = dataclasses.replace(base, steps_per_iteration=2048, **parts)
    reference_env = dataclasses.asdict(EnvSpec(**study.SIXTEEN_CORE.env))
    reference_ppo = dataclasses.asdict(PRESETS["report"])
    key = study._profile_key(reference_env, reference_ppo)
    (profiles / f"profile-{key}.json").write_text(json.dumps(reference_profile.to_json()))

    assert study.main([str(run_dir), "--out", str(tmp_path / "out")]) == 0
    data = json.loads((tmp_path / "out" / "study.json").read_text())
    measured_fps = {c.id: c["fps"].value for cases in run_stats(run).values() for c in cases if c["fps"] is not None}
    assert {cell["case"] for cell in data["measured"]} == set(measured_fps)
    for cell in data["measured"]:
        config = Config(**cell["config"])
        predicted = predict(smoke_profile, config, Hardware(run["machine"]["usable_cpus"])).fps
        assert cell["measured"] == pytest.approx(measured_fps[cell["case"]])
        assert cell["predicted"] == pytest.approx(predicted)
        assert cell["error"] == pytest.approx(predicted / measured_fps[cell["case"]] - 1)
    errors = np.abs([cell["error"] for cell in data["measured"]])
    assert data["summary"]["measured"]["median_abs_error"] == pytest.approx(float(np.median(errors)))
    assert data["summary"]["measured"]["worst_abs_error"] == pytest.approx(float(errors.max()))
    serial_16 = predict(reference_profile, Config("serial"), Hardware(16)).fps
    for cell in data["reference"]:
        config = Config(**cell["config"])
        assert cell["predicted"] == pytest.approx(predict(reference_profile, config, Hardware(16)).fps / serial_16)
        assert cell["measured"] == pytest.approx(study.SIXTEEN_CORE.fps[config] / study.SIXTEEN_CORE.serial)
    assert "median |error|" in (tmp_path / "out" / "study.md").read_text()


def test_profile_parameters_are_the_probes_arithmetic() -> None:
    """The profile from raw probe figures, worked by hand: the env's mean, spread, CPU share and reset; a worker's
    own loop and transfer per step from its long fragment less a round; lines through the probe points against
    workers per core; central inference's transport beyond the env's step."""
    from harness.advise.profile import _central_profile, _env_profile, _remote_profile

    env = _env_profile({"step_wall_s": [1e-3, 2e-3, 3e-3, 4e-3], "step_cpu_s": [1e-3, 1e-3, 0.0, 0.0],
                        "reset_wall_s": [5e-3, 7e-3], "episode_lengths": [200, 100], "obs_dim": 3, "act_dim": 1,
                        "obs_bytes": 12})  # fmt: skip
    assert env.step_mean_s == pytest.approx(2.5e-3)
    assert env.step_cv == pytest.approx(np.std([1, 2, 3, 4]) / 2.5)
    assert env.cpu_fraction == pytest.approx(2 / 10)
    assert env.step_p99_s == pytest.approx(np.quantile([1e-3, 2e-3, 3e-3, 4e-3], 0.99))
    assert env.reset_per_step_s == pytest.approx(6e-3 / 150)
    assert env.cost_s == pytest.approx(2.5e-3 + 6e-3 / 150)

    def workers(count: int) -> dict:
        return {"startup_s": 1.0 + 0.1 * count, "sync_s": 1e-3 + 2e-4 * count, "sync_nowait_s": 1e-4, "round_s": 2e-3 + 5e-4 * count,
                "sync_bytes": 100, "worker_pss_mib": 40.0 + count, "cpu_per_step_s": 3e-3 + 1e-4 * count}  # fmt: skip

    raw = {"by_workers": {str(k): workers(k) for k in (1, 2, 4)},
           "fragment": {"steps": 100, "wall_s": 0.35, "compute_s": 0.3, "env_s": 0.26, "inference_s": 0.01,
                        "transfer_bytes": 4000}}  # fmt: skip
    remote = _remote_profile(raw, env, {"inference": {"1": 1e-5}}, cpus=2.0)
    assert remote.worker_loop_s == pytest.approx(0.3 / 100 - env.cost_s - 1e-5)
    assert remote.transfer_per_step_s == pytest.approx((0.35 - 0.3 - 2.5e-3) / 100)
    assert remote.transfer_bytes_per_step == pytest.approx(40)
    assert (remote.round_s.intercept, remote.round_s.slope) == (pytest.approx(2e-3), pytest.approx(5e-4))
    # 1, 2 and 4 workers on 2 cores are 0.5, 1 and 2 per core: 1e-4 per worker is 2e-4 per worker per core
    assert (remote.cpu_per_step_s.intercept, remote.cpu_per_step_s.slope) == (pytest.approx(3e-3), pytest.approx(2e-4))
    assert remote.worker_mib == pytest.approx(42.0)
    constant = make_profile(samples=(1e-3,)).env
    central = _central_profile({"by_processes": {
        "1": {"env_s": 1.3e-3, "other_s": 1e-4, "startup_s": 0.2, "process_pss_mib": 9.0, "cpu_per_step_s": 1e-3},
        "2": {"env_s": 1.4e-3, "other_s": 1e-4, "startup_s": 0.3, "process_pss_mib": 8.0, "cpu_per_step_s": 1.1e-3}}},
        constant, cpus=2.0)  # fmt: skip
    # beyond the (constant) 1 ms step: 0.4 ms with one process, 0.5 ms with two
    assert (central.overhead_s.intercept, central.overhead_s.slope) == (pytest.approx(3e-4), pytest.approx(1e-4))
    assert (central.cpu_per_step_s.intercept, central.cpu_per_step_s.slope) == (pytest.approx(0.9e-3), pytest.approx(2e-4))
    assert central.process_mib == 8.0


@pytest.mark.parametrize(
    ("pick", "other", "switches"),
    [
        ((1000.0, 1005.0, 995.0), (2000.0, 2010.0, 1990.0), True),  # twice as fast, no spread: significant
        ((1100.0, 1000.0, 1050.0), (1000.0, 1500.0, 2500.0), False),  # faster on average, but within its noise
        ((1000.0, 1005.0, 995.0), (900.0, 905.0, 895.0), False),  # slower
    ],
)
def test_measurement_overturns_the_model_only_when_significant(pick: tuple, other: tuple, switches: bool) -> None:
    """The validated pick is the model's unless another configuration measured faster by Welch's test on log FPS
    at 5%, as scipy computes it."""
    from harness.advise.validate import Validated, recommend
    from harness.stats import Estimate

    def validated(label_workers: int, samples: tuple) -> Validated:
        config = Config("multiprocessing", label_workers, 1)
        return Validated(config, 1.0, Estimate(len(samples), float(stats.gmean(samples)), None, None, "geometric mean"),
                         len(samples), samples)  # fmt: skip

    serial = Validated(Config("serial"), 1.0, Estimate(3, 500.0, None, None, "geometric mean"), 3, (500.0, 501.0, 499.0))
    results = [serial, validated(2, pick), validated(4, other)]
    welch = stats.ttest_ind(np.log(other), np.log(pick), equal_var=False)
    assert bool(welch.pvalue < 0.05 and np.mean(np.log(other)) > np.mean(np.log(pick))) == switches
    chosen, why = recommend(results)
    assert chosen is (results[2] if switches else results[1])
    assert why.startswith("measurement" if switches else "model")


def test_a_deadline_stops_the_running_case_and_leaves_the_rest_not_run(tmp_path) -> None:  # noqa: ANN001
    """The validation ends at the budget's deadline: the runner stops the case running then (recorded as stopped by
    the budget) and records the rest as not run, so `advise` stays within --budget-minutes."""
    import time

    from rich.console import Console

    from harness.advise.model import Prediction
    from harness.advise.validate import run_validation, validation_suite
    from harness.results import load_run

    # 512 steps of a 5 ms step: each iteration takes over 2.5 s, each run (4 iterations) over 10 s
    predictions = [Prediction(Config("serial"), 1.0, 1.0, {}), Prediction(Config("vecenv", 1, 2), 1.0, 1.0, {})]
    env, kwargs = "tests.custom_envs:BusyPendulum", {"cost_ms": 5.0, "cv": 0.1, "max_episode_steps": 200}
    suite = validation_suite(env, kwargs, "cartpole", predictions, repeats=2)
    started = time.monotonic()
    run_dir, results = run_validation(suite, predictions, tmp_path, Console(quiet=True), case_timeout_s=600,
                                      deadline=started + 4.0)  # fmt: skip
    assert time.monotonic() - started < 4.0 + 30  # the stopped case closes within the runner's grace
    assert all(v.measured_fps is None and v.runs_ok == 0 for v in results)
    runs = [r for case in load_run(run_dir)["cases"] for r in case["runs"]]
    assert len(runs) == 4
    assert runs[0]["error"].startswith("stopped after") and runs[0]["error"].endswith("the time budget ran out")
    assert [r["error"] for r in runs[1:]] == ["not run: the time budget ran out"] * 3
