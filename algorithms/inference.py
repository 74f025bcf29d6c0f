"""The policy copy a sampler holds: numpy inference from the flat weight buffer, no torch.

A forward pass of the report's network (two 256-wide tanh layers) is three small matrix products;
at the batch sizes a sampler sees (1 to 64 envs), torch's per-call overhead was most of a policy
call, and importing torch made every sampling process far larger (issue 13; `benchmarks/test_bench_learner.py`
times both). The same arithmetic in numpy, from the broadcast buffer laid out by
`PolicySpec.layout` (the layout the learner's torch model flattens to, checked by
`tests/test_model.py`), samples the same actions within float32 rounding, and a worker that
imports only this never loads torch. The layers are `PolicySpec.hidden_sizes`, run in a loop:
`benchmarks/test_bench_learner.py::test_inference_act` times it against the two-layer forward
pass it replaced (issue 23).
"""

from __future__ import annotations

import numpy as np

from algorithms.policy import PolicySpec


def _relu(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0, out=out)


_ACTIVATIONS = {"tanh": np.tanh, "relu": _relu}
"""`algorithms.policy.ACTIVATIONS` in numpy, each called as `f(x, out=x)`."""


class InferencePolicy:
    """Numpy in, numpy out; no optimizer. Samplers hold one and load flat weights.

    Exploration noise is passed in, not drawn here, so that the same env draws
    the same noise whichever process or batch it is sampled in.
    """

    def __init__(self, policy: PolicySpec) -> None:
        self.spec = policy
        self.action = policy.action
        self.version = -1
        self.num_params = policy.num_params
        # The policy's own buffer, and views of it shaped as the parameters, made once: a load copies
        # (the broadcast buffer may be a shared-memory slot the learner reuses, or a read-only Ray
        # object) and rebuilds nothing.
        self.flat = np.zeros(self.num_params, np.float32)
        self.views = policy.unflatten(self.flat)
        self.distribution_params = tuple(self.views[name] for name in self.action.params)
        # The weight matrices, transposed to (in, out) and C-contiguous, refreshed by each load: OpenBLAS
        # multiplies by a transposed view ~5x slower at a batch of 8 (56 vs 11 us for 256x256 here), so
        # a load transposes them once rather than every call paying for it. Both heads are one product.
        self.head_size = self.action.head_size
        self.layers = tuple(
            (np.zeros(self.views[f"{name}.weight"].shape[::-1], np.float32), self.views[f"{name}.bias"])
            for name in policy.trunk_layers
        )
        self.activate = _ACTIVATIONS[policy.activation]
        self.w_heads = np.zeros((policy.hidden_sizes[-1], self.head_size + 1), np.float32)
        self.b_heads = np.zeros(self.head_size + 1, np.float32)

    def load_flat(self, weights: np.ndarray, version: int) -> None:
        """Load a flat float32 buffer in `PolicySpec.layout()` order (what the learner broadcasts)."""
        if weights.shape != (self.num_params,):
            raise ValueError(f"weight buffer has shape {weights.shape}, expected ({self.num_params},)")
        np.copyto(self.flat, weights, casting="same_kind")
        views, size = self.views, self.head_size
        for name, (weight, _) in zip(self.spec.trunk_layers, self.layers, strict=True):
            np.copyto(weight, views[f"{name}.weight"].T)
        np.copyto(self.w_heads[:, :size], views["policy_head.weight"].T)
        np.copyto(self.w_heads[:, size], views["value_head.weight"][0])
        self.b_heads[:size], self.b_heads[size] = views["policy_head.bias"], views["value_head.bias"][0]
        self.version = version

    def forward(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Policy head outputs `(B, head_size)` (means or logits) and values `(B,)`, float32."""
        features = obs
        for weight, bias in self.layers:
            features = features @ weight
            features += bias  # in place: one temporary per layer, not two
            self.activate(features, out=features)
        heads = features @ self.w_heads
        heads += self.b_heads
        return heads[:, : self.head_size], heads[:, self.head_size]

    def act(self, obs: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample from the policy with the given noise: actions (raw, before `to_env`), their log-probs, values."""
        head, value = self.forward(obs)
        actions, log_prob = self.action.sample(head, self.distribution_params, noise)
        return actions, log_prob, value

    def value(self, obs: np.ndarray) -> np.ndarray:
        """State values `(B,)`."""
        return self.forward(obs)[1]

    def mode(self, obs: np.ndarray) -> np.ndarray:
        """The deterministic action used for evaluation: the mean, or the most likely action."""
        return self.action.mode(self.forward(obs)[0], self.distribution_params)
