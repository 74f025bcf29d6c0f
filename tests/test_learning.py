"""PPO really learns: the `tuned` preset solves Pendulum-v1 (deterministic evaluation >= -200)."""

from __future__ import annotations

import pytest

from algorithms.config import PRESETS
from backends.base import BackendSpec
from backends.envs import EnvSpec
from harness.case import CaseRun
from harness.suite import CaseConfig, MeasureConfig

pytestmark = pytest.mark.slow


def test_tuned_preset_reaches_minus_200_within_150k_steps():
    case = CaseConfig(
        "learning/vecenv", "learning", "vecenv tuned", BackendSpec("vecenv", 1, 4), EnvSpec(), PRESETS["tuned"], "tuned"
    )
    measure = MeasureConfig(mode="convergence", seeds=(0,), total_steps=150_000, eval_every=8192, eval_episodes=10,
                            final_eval_episodes=20, threshold=-200.0)  # fmt: skip
    result = CaseRun(case, measure, seed=0).run()
    curve = [(e["steps"], e["mean_return"]) for e in result["evaluations"]]
    reached = [steps for steps, mean_return in curve if mean_return >= -200.0]
    assert reached, f"never reached -200 within 150K steps; evaluations: {curve}"
    assert reached[0] <= 150_000
    assert result["final_evaluation"]["mean_return"] >= -250.0, result["final_evaluation"]
    assert sum(it["steps"] for it in result["iterations"]) >= 150_000
