"""Policy inference as it was before issue 13, in torch: kept as the reference numpy inference is timed against.

`benchmarks/test_bench_learner.py::test_inference_act` times both on the same weights, inputs and
batch sizes, so the case for numpy inference (and for central inference using it at every batch
size) is measured in every benchmark run, not remembered.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from algorithms.model import ActorCritic
from algorithms.policy import PolicySpec


class TorchInferencePolicy:
    """The pre-issue-13 `InferencePolicy`: an `ActorCritic` without gradients, one thread, numpy in and out."""

    def __init__(self, policy: PolicySpec) -> None:
        torch.set_num_threads(1)
        self.action = policy.action
        self.model = ActorCritic(policy).requires_grad_(False)
        self.version = -1

    def load_flat(self, weights: np.ndarray, version: int) -> None:
        nn.utils.vector_to_parameters(torch.from_numpy(np.array(weights, dtype=np.float32)), self.model.parameters())
        self.version = version

    @torch.no_grad()
    def act(self, obs: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        head, value = self.model(torch.from_numpy(obs))
        params = tuple(getattr(self.model, name).numpy() for name in self.action.params)
        actions, log_prob = self.action.sample(head.numpy(), params, noise)
        return actions, log_prob, value.numpy()
