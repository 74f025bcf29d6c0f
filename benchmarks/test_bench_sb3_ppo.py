"""Our PPO against Stable-Baselines3's PPO, end to end, on the same network and settings, alternated in one run
(issue 24's goal: at least 3.5x SB3's best end-to-end FPS).

Both train Pendulum-v1 with the report's hyperparameters (2,048 steps an iteration, 10 epochs of minibatch 64,
lr 3e-4, clip 0.2, GAE 0.95, gamma 0.99, value coefficient 0.5, grad norm 0.5) on the report's network: one tanh
trunk of 256 x 256 shared by a linear policy head and a linear value head (in SB3, a features extractor shared by
both heads and an empty `net_arch`). SB3 runs as itself: `PPO.learn` over its own `DummyVecEnv` of 1 or 8 envs
(its best of the two is the reference); ours is the harness's sync iteration (broadcast, `vecenv` collect, train)
with each kernel. Every config runs `ITERATIONS` iterations per block, each first in turn, one torch thread
throughout. FPS ratios are printed and kept in `extra_info` (`pytest benchmarks/test_bench_sb3_ppo.py
--benchmark-only`), not asserted.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from threadpoolctl import threadpool_limits

from algorithms.base import LearnerSetup
from algorithms.config import KERNELS, PRESETS
from algorithms.ppo import PPOLearner
from backends import create_backend
from backends.base import BackendSpec
from benchmarks.common import ENV, POLICY, SEED, STEPS

REPORT = PRESETS["report"]
ITERATIONS, BLOCKS = 3, 5


class SharedTrunk:
    """Built lazily (SB3 is imported only here): SB3's features extractor as the report's shared 256 x 256 trunk."""

    @staticmethod
    def extractor() -> type:
        from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

        class Trunk(BaseFeaturesExtractor):
            def __init__(self, observation_space: gym.Space, features_dim: int = 256) -> None:
                super().__init__(observation_space, features_dim)
                inputs = int(np.prod(observation_space.shape))
                self.net = torch.nn.Sequential(torch.nn.Linear(inputs, 256), torch.nn.Tanh(), torch.nn.Linear(256, 256),
                                               torch.nn.Tanh())  # fmt: skip

            def forward(self, obs: torch.Tensor) -> torch.Tensor:
                return self.net(obs)

        return Trunk


def sb3_trainer(envs: int) -> tuple[Callable[[int], int], Callable[[], None]]:
    """A function that trains SB3's PPO for N more iterations and returns the env steps taken; a closer."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import Logger

    venv = make_vec_env("Pendulum-v1", n_envs=envs, seed=SEED)
    model = PPO(
        "MlpPolicy", venv, learning_rate=REPORT.learning_rate, n_steps=STEPS // envs, batch_size=REPORT.minibatch_size,
        n_epochs=REPORT.epochs, gamma=REPORT.gamma, gae_lambda=REPORT.gae_lambda, clip_range=REPORT.clip_range,
        ent_coef=REPORT.entropy_coef, vf_coef=REPORT.value_coef, max_grad_norm=REPORT.max_grad_norm, seed=SEED,
        device="cpu", verbose=0,
        policy_kwargs={"features_extractor_class": SharedTrunk.extractor(), "share_features_extractor": True,
                       "net_arch": [], "activation_fn": torch.nn.Tanh, "log_std_init": REPORT.init_log_std},
    )  # fmt: skip
    assert sum(p.numel() for p in model.policy.parameters()) == POLICY.num_params  # the same network, parameter for parameter
    model.set_logger(Logger(folder=None, output_formats=[]))  # its default makes a folder per learn() in the temp dir

    def train(iterations: int) -> int:
        before = model.num_timesteps
        model.learn(total_timesteps=STEPS * iterations, reset_num_timesteps=False)
        return model.num_timesteps - before

    return train, venv.close


def our_trainer(kernel: str) -> tuple[Callable[[int], int], Callable[[], None]]:
    """The harness's sync iteration, N times: broadcast the weights, collect 2,048 steps of 8 envs, train."""
    learner = PPOLearner(LearnerSetup(REPORT.replace(kernel=kernel), POLICY, SEED))
    backend = create_backend(BackendSpec("vecenv", 1, 8))
    backend.start(ENV, POLICY, SEED)

    def train(iterations: int) -> int:
        steps = 0
        for _ in range(iterations):
            backend.set_weights(learner.weights(), learner.version)
            rollout = backend.collect(STEPS).rollout
            learner.train(rollout)
            steps += rollout.num_steps
        return steps

    return train, backend.close


def test_our_ppo_against_sb3s_end_to_end(benchmark, report_line):
    configs = {f"sb3 DummyVecEnv {n}": (lambda n=n: sb3_trainer(n)) for n in (1, 8)}
    configs |= {f"ours vecenv 8, kernel {k}": (lambda k=k: our_trainer(k)) for k in KERNELS}
    trainers, closers = {}, []
    try:
        for name, make in configs.items():
            trainers[name], close = make()
            closers.append(close)
        # --benchmark-disable (the test command): one iteration of each, a check that both sides train.
        blocks, iterations = (1, 1) if benchmark.disabled else (BLOCKS, ITERATIONS)
        fps: dict[str, list[float]] = {name: [] for name in trainers}
        names = list(trainers)
        with threadpool_limits(torch.get_num_threads(), user_api="blas"):
            for name in names if not benchmark.disabled else ():
                trainers[name](1)  # warm-up: SB3's first rollout, our kernels' first calls
            for block in range(blocks):
                for name in names[block % len(names) :] + names[: block % len(names)]:  # each goes first in turn
                    started = time.perf_counter()
                    steps = trainers[name](iterations)
                    fps[name].append(steps / (time.perf_counter() - started))
                    assert steps == STEPS * iterations, (name, steps)
    finally:
        for close in closers:
            close()
    medians = {name: float(np.median(values)) for name, values in fps.items()}
    best_sb3 = max(v for n, v in medians.items() if n.startswith("sb3"))
    benchmark.extra_info |= {f"{name} fps": value for name, value in medians.items()}
    benchmark.extra_info |= {f"{name} over best sb3": value / best_sb3 for name, value in medians.items()}
    report_line(f"End to end, report preset, Pendulum-v1, {torch.get_num_threads()} torch thread(s), medians of {blocks} "
                f"alternated blocks of {iterations} iterations:")  # fmt: skip
    for name, value in medians.items():
        report_line(f"  {name}: {value:,.0f} FPS, {value / best_sb3:.2f}x SB3's best")
    benchmark.pedantic(lambda: None, rounds=1)  # the figures are in extra_info; nothing more to time
