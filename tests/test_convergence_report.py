"""The convergence table counts every seed: censored seeds enter the median as beyond the budget, the budget
shown is what ran, steps carry their evaluation granularity, and two rows of one experiment are named so."""

from __future__ import annotations

from harness.analysis import case_stats, report_deviations
from harness.report import HEADERS, TABLES, TableContext
from harness.stats import censored_median

STEPS, EVAL_EVERY, BUDGET = 2048, 8192, 30_000  # 15 iterations: 30,720 steps run


def test_censored_median_counts_every_seed():
    assert censored_median([8192, 24576, None]) == 24576  # the censored seed sorts last
    assert censored_median([8192, None, None]) is None  # most seeds never got there: no median
    assert censored_median([8192, 16384, 24576, None]) == 20480  # numpy's median, one definition
    assert censored_median([]) is None


def _run(reached_at: int | None, seed: int) -> dict:
    iterations = [
        {"steps": STEPS, "steps_trained": STEPS * (i + 1), "total_s": 0.5, "sync_s": 0.0, "collect_s": 0.2, "train_s": 0.3,
         "warmup": False, "policy_lag": {"min": 0, "mean": 0.0, "max": 0}, "learner": {}}
        for i in range(15)
    ]  # fmt: skip
    evaluations = [
        {"steps": s, "train_wall_s": s / 4096, "mean_return": -150.0 if reached_at and s >= reached_at else -900.0}
        for s in range(EVAL_EVERY, STEPS * 15 + 1, EVAL_EVERY)
    ]
    return {"status": "ok", "seed": seed, "iterations": iterations, "evaluations": evaluations,
            "final_evaluation": {"mean_return": -160.0}}  # fmt: skip


def _case(backend: str, reached: list[int | None], workers: int = 4) -> dict:
    return {
        "id": f"c/{backend}", "part": "c", "label": backend,
        "backend": {"name": backend, "workers": workers, "envs_per_worker": 1, "inference": "worker", "options": {}, "schedule": "sync"},
        "env": {"id": "Pendulum-v1"}, "hyperparameters": {}, "preset": "tuned", "algorithm": {"name": "ppo"},
        "runs": [_run(r, seed) for seed, r in enumerate(reached)],
    }  # fmt: skip


PART = {"measure": {"mode": "convergence", "threshold": -200.0, "total_steps": BUDGET, "eval_every": EVAL_EVERY}}


def test_table_counts_censored_seeds_shows_granularity_and_the_budget_that_ran():
    vecenv_4 = _case("vecenv", [8192, 24576, None], workers=1)
    vecenv_4["backend"]["envs_per_worker"] = 4
    cases = [
        case_stats(_case("multiprocessing", [8192, 24576, None]), PART, 2),
        case_stats(_case("ray_local", [8192, 24576, None]), PART, 2),
        case_stats(_case("serial", [8192, None, None], workers=1), PART, 2),  # 1 env: other rollouts
        case_stats(vecenv_4, PART, 2),  # 4 envs too, but one policy call for all 4: other float32 rounding
    ]
    table, lines = TABLES["convergence"].render(TableContext(cases, None, HEADERS["en"]))
    assert "24,576 (evaluated every 8,192); 1 seed(s) > 30,720" in table
    assert "not reached: 2 of 3 seeds not within 30,720 steps" in table
    assert "| 6.0 " in table  # seconds to the threshold: the median seed's wall time, 24,576 / 4,096
    assert any(line.startswith("multiprocessing · 4w×1e, ray_local · 4w×1e sample identical rollouts") for line in lines)
    assert not any(("serial" in line or "vecenv" in line) and "identical" in line for line in lines)


def test_a_seed_whose_policy_diverged_is_named_and_left_out_of_the_final_mean_only():
    """A NaN evaluation (weights gone non-finite) is no return: the seed is named as diverged, the final mean is of
    the other seeds (the cell says n=2 of 3), and its steps to the threshold count as not reached after it."""
    case = _case("ray_local", [8192, 24576, None])
    broken = case["runs"][2]
    for evaluation in broken["evaluations"][1:]:
        evaluation["mean_return"] = float("nan")
    broken["final_evaluation"]["mean_return"] = float("nan")
    case["runs"][1]["final_evaluation"]["mean_return"] = -140.0
    table, lines = TABLES["convergence"].render(TableContext([case_stats(case, PART, 2)], None, HEADERS["en"]))
    assert "| -150.0 (n=2 of 3) " in table  # the mean of -160 and -140, no interval from two seeds
    assert "2/3" in table and "24,576 (evaluated every 8,192); 1 seed(s) > 30,720" in table
    assert [line for line in lines if "diverged" in line] == [
        "ray_local · 4w×1e: **diverged** on seed(s) 2: an evaluation's mean return was not a number (the policy's weights "
        "became NaN or infinite): it reached the threshold only if it did before, and its final return is left out of the mean."
    ]
    healthy = case_stats(_case("ray_local", [8192, 24576, None]), PART, 2)
    assert not any("diverged" in line for line in TABLES["convergence"].render(TableContext([healthy], None, HEADERS["en"]))[1])


def test_a_seed_that_diverged_after_its_last_evaluation_is_named_by_its_final_one():
    """Every periodic evaluation finite, the final one NaN: the weights broke in the last iterations, and the seed is
    named all the same; it keeps its steps to the threshold (reached before) and leaves the final mean."""
    case = _case("ray_local", [8192, 24576, 8192])
    case["runs"][0]["final_evaluation"]["mean_return"] = float("nan")
    stats = case_stats(case, PART, 2)
    assert stats.convergence.diverged == [0]
    table, lines = TABLES["convergence"].render(TableContext([stats], None, HEADERS["en"]))
    assert "| -160.0 (n=2 of 3) " in table and "3/3" in table
    assert sum("**diverged** on seed(s) 0:" in line for line in lines) == 1


def test_deviations_from_the_report_are_the_settings_a_preset_changes():
    """As run.json holds settings (JSON: a layer list is a list): the report's preset deviates in nothing; `tuned` in
    the four settings the README lists; `cartpole` also in its batch, minibatch, lambda and 64-wide network; APPO's
    settings stand beside no report figure."""
    import dataclasses
    import json

    from algorithms.config import APPO_PRESETS, PRESETS

    def as_recorded(preset):
        return json.loads(json.dumps(dataclasses.asdict(preset)))

    assert report_deviations(as_recorded(PRESETS["report"])) == {}
    assert set(report_deviations(as_recorded(PRESETS["tuned"]))) == {"learning_rate", "gamma", "reward_scale", "anneal_lr"}
    cartpole = report_deviations(as_recorded(PRESETS["cartpole"]))
    assert cartpole["hidden_sizes"] == ([256, 256], [64, 64])
    assert set(cartpole) == {"learning_rate", "gamma", "gae_lambda", "steps_per_iteration", "minibatch_size",
                             "hidden_sizes", "anneal_lr"}  # fmt: skip
    assert report_deviations(as_recorded(APPO_PRESETS["tuned"])) == {}
