"""`train_threads` (issue 24): under sync, the learner trains with the cores the waiting workers leave idle, and
sampling in its process goes back to `torch_threads`. A learner that reads the thread counts where it runs says so."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from algorithms.rollout import Rollout
from harness.errors import HarnessError
from harness.suite import load_suite
from tests.test_algorithm_seam import RandomSearchLearner
from tests.test_cli import run_suite_text


def blas_threads() -> int:
    return max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")


class ThreadReportingLearner(RandomSearchLearner):
    """Random search that reports torch's and BLAS's thread counts in `train`, and in `weights` (called to broadcast,
    outside training, just before the backend samples)."""

    def weights(self) -> np.ndarray:
        self.outside = (torch.get_num_threads(), blas_threads())
        return super().weights()

    def train(self, rollout: Rollout) -> dict[str, float]:
        inside = (torch.get_num_threads(), blas_threads())
        return super().train(rollout) | {
            "torch_in_train": inside[0], "blas_in_train": inside[1],
            "torch_outside": self.outside[0], "blas_outside": self.outside[1],
        }  # fmt: skip


SUITE = """
[suite]
name = "threads"
[algorithm]
name = "tests.test_train_threads:ThreadReportingLearner"
[ppo]
steps_per_iteration = 64
hidden_sizes = [16, 16]
[measure]
warmup_iterations = 0
iterations = 2
repeats = 1
torch_threads = 1
[[cases]]
backend = "vecenv"
envs_per_worker = 2
train_threads = 2
[[cases]]
backend = "vecenv"
envs_per_worker = 2
"""


def test_the_learner_trains_with_train_threads_and_samples_with_torch_threads(tmp_path):
    _, run = run_suite_text(tmp_path, SUITE)
    labels = [case["label"] for case in run["cases"]]
    assert labels == ["vecenv train 2", "vecenv"]
    for case, training in zip(run["cases"], (2, 1), strict=True):
        assert case["train_threads"] == (2 if training == 2 else None)
        (result,) = case["runs"]
        assert result["status"] == "ok", result.get("error")
        assert result["torch_threads"] == 1 and result["train_threads"] == training
        for iteration in result["iterations"]:
            stats = iteration["learner"]
            assert (stats["torch_in_train"], stats["blas_in_train"]) == (training, training)
            assert (stats["torch_outside"], stats["blas_outside"]) == (1, 1)  # back for the next broadcast and sample


def test_train_threads_under_overlap_is_refused(tmp_path):
    text = SUITE.replace("train_threads = 2", 'train_threads = 2\nschedule = "overlap"').replace(
        'backend = "vecenv"\nenvs_per_worker = 2\ntrain_threads', 'backend = "multiprocessing"\nworkers = 2\ntrain_threads'
    )
    (tmp_path / "suite.toml").write_text(text)
    with pytest.raises(HarnessError, match="train_threads gives the learner the cores the workers leave idle while it "
                                           "trains under sync; under overlap they sample meanwhile"):  # fmt: skip
        load_suite(tmp_path / "suite.toml")
