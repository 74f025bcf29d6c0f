"""PPO really learns: the `tuned` preset solves Pendulum-v1 (deterministic evaluation >= -200) and the
`cartpole` preset CartPole-v1 (>= 475), and both stay solved at the end of their budgets."""

from __future__ import annotations

import dataclasses

import pytest

from algorithms.base import AlgorithmSpec
from algorithms.config import APPO_PRESETS, PRESETS
from algorithms.evaluate import evaluation_seeds
from backends.base import BackendSpec
from backends.envs import EnvSpec
from harness.case import CaseRun
from harness.suite import CaseConfig, MeasureConfig

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("seed", "kernel"), [(0, "torch"), (1, "torch"), (0, "numba")])
def test_tuned_preset_solves_pendulum_within_150k_steps(seed, kernel):
    """On two seeds, the `tuned` preset holds -200 at the end of its 150K-step budget: the median of the last
    three 10-episode evaluations, and a final 20-episode evaluation, all on seeds disjoint from training.
    (One lucky evaluation among ~19 noisy ones, which the test used to accept, is not solving it.)
    About 30 s per seed here; the numba kernel of the minibatch step (issue 24) on seed 0 too."""
    case = CaseConfig(
        "learning/vecenv",
        "learning",
        "vecenv tuned",
        BackendSpec("vecenv", 1, 4),
        EnvSpec(),
        dataclasses.asdict(PRESETS["tuned"].replace(kernel=kernel)),
        "tuned",
    )
    measure = MeasureConfig(mode="convergence", seeds=(seed,), total_steps=150_000, eval_every=8192, eval_episodes=10,
                            final_eval_episodes=20, threshold=-200.0)  # fmt: skip
    result = CaseRun(case, measure, seed=seed).run()
    curve = [(e["steps"], e["mean_return"]) for e in result["evaluations"]]
    last_three = sorted(mean_return for _, mean_return in curve[-3:])
    assert len(curve) >= 3 and last_three[1] >= -200.0, f"evaluations: {curve}"
    final = result["final_evaluation"]
    assert len(final["returns"]) == 20 and final["mean_return"] >= -200.0, final
    # Evaluation episodes are not training episodes: their seeds lie above every training env's.
    assert min(evaluation_seeds(seed, 20)) > seed + case.backend.num_envs


def test_cartpole_preset_solves_cartpole_within_100k_steps():
    """A Categorical policy learns: CartPole-v1 to a deterministic mean of 475 (of 500) on seed 0, and stays
    there: the median of the last three 10-episode evaluations and the final 20-episode one both reach it.
    About 10 s here (the preset's 196 iterations of 512 steps)."""
    case = CaseConfig(
        "learning/cartpole", "learning", "vecenv cartpole", BackendSpec("vecenv", 1, 8), EnvSpec("CartPole-v1"),
        dataclasses.asdict(PRESETS["cartpole"]), "cartpole",
    )  # fmt: skip
    measure = MeasureConfig(mode="convergence", seeds=(0,), total_steps=100_000, eval_every=8192, eval_episodes=10,
                            final_eval_episodes=20, threshold=475.0)  # fmt: skip
    result = CaseRun(case, measure, seed=0).run()
    curve = [(e["steps"], e["mean_return"]) for e in result["evaluations"]]
    last_three = sorted(mean_return for _, mean_return in curve[-3:])
    assert len(curve) >= 3 and last_three[1] >= 475.0, f"evaluations: {curve}"
    assert result["final_evaluation"]["mean_return"] >= 475.0, result["final_evaluation"]
    assert len(result["final_evaluation"]["returns"]) == 20


def test_appo_cartpole_preset_solves_cartpole_within_100k_steps():
    """The second learner learns too: APPO (V-trace under the clipped update) to 475 on CartPole-v1, seed 0, and
    ends there (the final 20-episode evaluation). About 10 s here."""
    case = CaseConfig(
        "learning/appo", "learning", "vecenv appo", BackendSpec("vecenv", 1, 8), EnvSpec("CartPole-v1"),
        dataclasses.asdict(APPO_PRESETS["cartpole"]), "cartpole", algorithm=AlgorithmSpec("appo"),
    )  # fmt: skip
    measure = MeasureConfig(mode="convergence", seeds=(0,), total_steps=100_000, eval_every=8192, eval_episodes=10,
                            final_eval_episodes=20, threshold=475.0)  # fmt: skip
    result = CaseRun(case, measure, seed=0).run()
    curve = [(e["steps"], e["mean_return"]) for e in result["evaluations"]]
    assert result["learner"]["algorithm"] == "appo"
    assert any(mean_return >= 475.0 for _, mean_return in curve), f"evaluations: {curve}"
    assert result["final_evaluation"]["mean_return"] >= 475.0, (curve, result["final_evaluation"])
