"""The learner seam: a second algorithm is one module plus one registry line, and the harness never knows PPO.

`RandomSearchLearner` below is that second algorithm: hill climbing on the flat weights,
keeping a perturbation when the rollout it sampled scored better. It has nothing of PPO
(no torch, no gradient, other statistics), and runs through the CLI like any learner.
"""

from __future__ import annotations

import ast
import dataclasses
import json

import numpy as np
import pytest

from algorithms import registry
from algorithms.base import Learner, LearnerSetup
from algorithms.config import SETTINGS_TABLES, APPOConfig, PPOConfig
from algorithms.policy import PolicySpec
from algorithms.ppo_gradients import STATISTICS
from algorithms.rollout import Rollout
from tests.conftest import REPO
from tests.test_cli import run_suite_text


class RandomSearchLearner(Learner):
    """Random search over the policy's flat weights (not PPO: no gradients, no torch)."""

    def __init__(self, setup: LearnerSetup) -> None:
        self.rng = np.random.default_rng(setup.seed)
        self.best = self.rng.normal(0.0, 0.1, setup.policy.num_params).astype(np.float32)
        self.best_score = -np.inf
        self.candidate = self.best
        self.version = 0
        self.steps_trained = 0

    def weights(self) -> np.ndarray:
        return self.candidate

    def train(self, rollout: Rollout) -> dict[str, float]:
        score = float(rollout.rewards.mean())
        accepted = score > self.best_score
        if accepted:
            self.best, self.best_score = self.candidate, score
        self.candidate = (self.best + self.rng.normal(0.0, 0.02, self.best.shape)).astype(np.float32)
        self.version += 1
        self.steps_trained += rollout.num_steps
        return {"mean_reward": score, "accepted": float(accepted)}

    def describe(self) -> dict[str, str]:
        return {"device": "cpu"}


SUITE = """
[suite]
name = "seam"
tables = ["speed", "phases", "communication"]
[algorithm]
name = "tests.test_algorithm_seam:RandomSearchLearner"
[ppo]
steps_per_iteration = 128
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
"""


def test_a_registry_line_is_all_a_learner_needs(monkeypatch):
    monkeypatch.setitem(registry.LEARNERS, "random-search", "tests.test_algorithm_seam:RandomSearchLearner")
    learner = registry.create_learner(
        "random-search", LearnerSetup(PPOConfig(hidden_sizes=(32, 32)), PolicySpec(3, 1, (32, 32)), seed=0)
    )
    assert isinstance(learner, RandomSearchLearner) and learner.weights().shape == (PolicySpec(3, 1, (32, 32)).num_params,)


def test_a_non_ppo_learner_runs_through_the_cli(tmp_path):
    run_dir, run = run_suite_text(tmp_path, SUITE)
    for case in run["cases"]:
        assert case["algorithm"]["name"] == "tests.test_algorithm_seam:RandomSearchLearner"
        (result,) = case["runs"]
        assert result["status"] == "ok", result.get("error")
        assert result["learner"]["name"] == case["algorithm"]["name"] and result["learner"]["device"] == "cpu"
        for iteration in result["iterations"]:
            assert set(iteration["learner"]) == {"mean_reward", "accepted"}  # its own statistics, nothing of PPO's
            assert iteration["train_s"] > 0 and iteration["policy_version"] == iteration["index"]
    report = (run_dir / "report.md").read_text()
    assert "RandomSearchLearner on cpu" in report and "| Config" in report
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"


def test_harness_never_imports_ppo():
    """The harness drives learners through algorithms.base and the registry only."""
    offenders = []
    for path in sorted((REPO / "harness").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n.startswith(("algorithms.ppo", "algorithms.ppo_gradients")) for n in names):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


# PPO's own names: its update's statistics, and the settings no other learner's table has.
PPO_STATISTICS = {*STATISTICS, "gae_s", "initial_clip_fraction"}
PPO_ONLY_SETTINGS = SETTINGS_TABLES["ppo"].field_names()
PPO_ONLY_SETTINGS = {
    n for n in PPO_ONLY_SETTINGS if all(n not in t.field_names() for k, t in SETTINGS_TABLES.items() if k != "ppo")
}


def _string_constants(tree: ast.AST) -> set[str]:
    """Every string literal but docstrings (prose may mention PPO; code must not name its statistics)."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }  # fmt: skip
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    }


def test_harness_names_no_ppo_statistic_or_setting():
    """The report shows each learner's statistics generically: no PPO name in harness/ code. harness/migrations.py
    is the exception that proves it: it reads records written when PPO was the only learner."""
    assert {"approx_kl", "gae_s", "decoupled", "target_kl", "gae_lambda"} <= PPO_STATISTICS | PPO_ONLY_SETTINGS
    named = {}
    for path in sorted((REPO / "harness").rglob("*.py")):
        if path.name == "migrations.py":
            continue
        found = _string_constants(ast.parse(path.read_text())) & (PPO_STATISTICS | PPO_ONLY_SETTINGS)
        if found:
            named[str(path.relative_to(REPO))] = sorted(found)
    assert named == {}


def test_the_ast_check_sees_a_statistic_named_in_code():
    tree = ast.parse('"""mentions approx_kl in prose"""\nx = stats["approx_kl"]\n')
    assert _string_constants(tree) & PPO_STATISTICS == {"approx_kl"}
    assert _string_constants(ast.parse('"""approx_kl"""')) == set()


APPO_SUITE = """
[suite]
name = "appo-cli"
tables = ["speed", "overlap", "phases"]
[algorithm]
name = "appo"
[appo]
steps_per_iteration = 128
hidden_sizes = [32, 32]
epochs = 2
minibatch_size = 32
[measure]
warmup_iterations = 1
iterations = 2
repeats = 1
[[cases]]
backend = "multiprocessing"
workers = 2
schedule = ["sync", "overlap"]
[[cases]]
backend = "ray_local"
workers = 2
schedule = ["sync", "overlap"]
"""


@pytest.mark.slow
def test_appo_runs_through_the_cli_sync_and_overlap(tmp_path):
    """On both remote transports (the learner never sees which one sampled its batch)."""
    run_dir, run = run_suite_text(tmp_path, APPO_SUITE)
    assert [c["backend"]["schedule"] for c in run["cases"]] == ["sync", "overlap"] * 2
    for case in run["cases"]:
        assert case["algorithm"]["name"] == "appo" and case["preset"] == "default"
        assert case["hyperparameters"] == {**dataclasses.asdict(APPOConfig()), "steps_per_iteration": 128,
                                           "hidden_sizes": [32, 32], "epochs": 2, "minibatch_size": 32}  # fmt: skip
        (result,) = case["runs"]
        assert result["status"] == "ok", result.get("error")
        assert result["learner"]["algorithm"] == "appo"
        for iteration in result["iterations"]:
            assert iteration["learner"]["vtrace_s"] > 0 and "gae_s" not in iteration["learner"]
            assert iteration["learner"]["optimizer_steps"] == 2 * 128 / 32
    for case in run["cases"][1::2]:
        overlap = case["runs"][0]["iterations"]
        assert [it["policy_lag"]["max"] for it in overlap] == [0, 1, 1]  # the first batch is fresh; then one version old
        assert any(it["learner"]["initial_kl"] > 0 for it in overlap)  # V-trace has something to correct
    assert "appo on cpu" in (run_dir / "report.md").read_text()
