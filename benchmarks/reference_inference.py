"""Policy inference as it was before: kept as the references numpy inference is timed against.

- `TorchInferencePolicy`: before issue 13, in torch.
- `TwoLayerInferencePolicy`: numpy, before issue 23 made the network a layer list: the report's two
  tanh layers written out, with nothing looped over.

`benchmarks/test_bench_learner.py::test_inference_act` times them on the same weights, inputs and
batch sizes, so the case for numpy inference (and for central inference using it at every batch
size) is measured in every benchmark run, not remembered; `test_layer_list_costs_nothing` alternates
today's layer loop with the two-layer code it replaced and records their ratio.
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


class TwoLayerInferencePolicy:
    """The pre-issue-23 numpy `InferencePolicy` (its `act`), for two tanh layers only: the code the layer list replaced."""

    def __init__(self, policy: PolicySpec) -> None:
        if len(policy.hidden_sizes) != 2 or policy.activation != "tanh":
            raise ValueError("the two-layer reference runs two tanh layers only")
        self.action = policy.action
        self.num_params = policy.num_params
        self.flat = np.zeros(self.num_params, np.float32)
        self.views = policy.unflatten(self.flat)
        self.distribution_params = tuple(self.views[name] for name in self.action.params)
        self.b1, self.b2 = self.views["trunk.0.bias"], self.views["trunk.2.bias"]
        hidden, self.head_size = policy.hidden_sizes[0], self.action.head_size
        self.w1 = np.zeros((policy.obs_dim, hidden), np.float32)
        self.w2 = np.zeros((hidden, hidden), np.float32)
        self.w_heads = np.zeros((hidden, self.head_size + 1), np.float32)
        self.b_heads = np.zeros(self.head_size + 1, np.float32)
        self.version = -1

    def load_flat(self, weights: np.ndarray, version: int) -> None:
        np.copyto(self.flat, weights, casting="same_kind")
        views, size = self.views, self.head_size
        np.copyto(self.w1, views["trunk.0.weight"].T)
        np.copyto(self.w2, views["trunk.2.weight"].T)
        np.copyto(self.w_heads[:, :size], views["policy_head.weight"].T)
        np.copyto(self.w_heads[:, size], views["value_head.weight"][0])
        self.b_heads[:size], self.b_heads[size] = views["policy_head.bias"], views["value_head.bias"][0]
        self.version = version

    def act(self, obs: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        features = np.tanh(np.tanh(obs @ self.w1 + self.b1) @ self.w2 + self.b2)
        heads = features @ self.w_heads + self.b_heads
        actions, log_prob = self.action.sample(heads[:, : self.head_size], self.distribution_params, noise)
        return actions, log_prob, heads[:, self.head_size]
