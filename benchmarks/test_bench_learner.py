"""Learner-side costs of one iteration: GAE, the PPO update, and policy inference.

Every number is per call, in the learner's process, with the harness's learner
thread count; `env_steps_per_s` is env steps handled per second of that call.
The `ppo-update` group times today's update beside the pre-issue-8 reference
(`benchmarks/reference_ppo.py`) in one run: `pytest benchmarks -k update --benchmark-only`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from functools import partial

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from algorithms.base import LearnerSetup
from algorithms.config import KERNELS, PRESETS
from algorithms.gae import compute_gae
from algorithms.inference import InferencePolicy
from algorithms.ppo import PPOLearner
from algorithms.rollout import PER_STEP_FIELDS, Rollout
from backends import create_backend
from backends.base import BackendSpec, PolicySpec
from benchmarks.common import ENV, POLICY, SEED, STEPS
from benchmarks.product_floor import Product, floor_products, time_floor
from benchmarks.reference_inference import TorchInferencePolicy, TwoLayerInferencePolicy
from benchmarks.reference_ppo import ReferencePPOLearner

REPORT = PRESETS["report"]
EPISODE_STEPS = 200  # Pendulum-v1's time limit


def synthetic_rollout(steps: int, num_envs: int) -> Rollout:
    """Random rewards and values with a truncation every 200 steps, staggered over envs.

    GAE's cost depends on the shape only, so made-up numbers time it as well as real ones.
    """
    rng = np.random.default_rng(SEED)
    t = np.arange(steps)[:, None] + np.arange(num_envs)[None, :] * 37
    truncations = (t % EPISODE_STEPS) == EPISODE_STEPS - 1
    shape = (steps, num_envs)
    return Rollout(
        obs=rng.standard_normal((*shape, POLICY.obs_dim), dtype=np.float32),
        actions=rng.standard_normal((*shape, POLICY.act_dim), dtype=np.float32),
        log_probs=rng.standard_normal(shape, dtype=np.float32),
        values=rng.standard_normal(shape, dtype=np.float32),
        rewards=-rng.uniform(0, 16, shape).astype(np.float32),  # Pendulum's reward range
        terminations=np.zeros(shape, bool),
        truncations=truncations,
        final_values=np.where(truncations, rng.standard_normal(shape), 0).astype(np.float32),
        last_values=rng.standard_normal(num_envs, dtype=np.float32),
        env_ids=np.arange(num_envs, dtype=np.int64),
        episode_returns=np.zeros(0),
        episode_lengths=np.zeros(0, np.int64),
        episode_env_ids=np.zeros(0, np.int64),
        policy_version=0,
    )


@pytest.mark.benchmark(group="gae")
@pytest.mark.parametrize("num_envs", [1, 8], ids=lambda n: f"2048x{n}")
def test_gae(benchmark, record_rate, num_envs):
    rollout = synthetic_rollout(STEPS, num_envs)
    advantages, returns = benchmark(compute_gae, rollout, REPORT.gamma, REPORT.gae_lambda)
    record_rate(rollout.num_steps)
    assert advantages.shape == returns.shape == (STEPS, num_envs) and advantages.dtype == np.float32
    assert np.isfinite(advantages).all()
    # GAE runs each env on its own: permuting the envs permutes the result's columns exactly (an index that
    # mixed envs up would not; a rotation, since a reversal would hide a reversed index). Its values are
    # checked by hand in tests/test_gae.py.
    order = np.roll(np.arange(num_envs), 1)
    permuted = dataclasses.replace(
        rollout, **{name: getattr(rollout, name)[:, order] for name in PER_STEP_FIELDS}, last_values=rollout.last_values[order]
    )
    permuted_advantages, _ = compute_gae(permuted, REPORT.gamma, REPORT.gae_lambda)
    np.testing.assert_array_equal(permuted_advantages, advantages[:, order])


# The update implementations timed side by side; each builds the same initial weights for SEED.
UPDATES = {
    "reference": lambda: ReferencePPOLearner(REPORT, POLICY, SEED),
    "fast": lambda: PPOLearner(LearnerSetup(REPORT, POLICY, SEED)),
    # Compiles (~20 s) here, in setup, never inside a timed round.
    "fast-compiled": lambda: PPOLearner(LearnerSetup(REPORT.replace(compile=True), POLICY, SEED)),
    # The numba kernel of the minibatch step (issue 24); compiles (~4 s, then cached on disk) here, in setup.
    "fast-numba": lambda: PPOLearner(LearnerSetup(REPORT.replace(kernel="numba"), POLICY, SEED)),
}


@pytest.fixture(scope="module")
def real_rollout() -> Rollout:
    """2048 real Pendulum steps (8 envs, vecenv) sampled with a fresh learner's weights, version 0."""
    learner = PPOLearner(LearnerSetup(REPORT, POLICY, SEED))
    with create_backend(BackendSpec("vecenv", 1, 8)) as backend:
        backend.start(ENV, POLICY, SEED)
        backend.set_weights(learner.weights(), learner.version)
        return backend.collect(STEPS).rollout


@pytest.mark.benchmark(group="ppo-update")
# Compiling takes 20-30 s, so as a check (`--benchmark-disable`) the compiled update is a slow test: `tox -e slow`.
@pytest.mark.parametrize(
    "implementation", [pytest.param(name, marks=pytest.mark.slow) if name == "fast-compiled" else name for name in UPDATES]
)
def test_ppo_update_report_preset(benchmark, record_rate, real_rollout, implementation):
    """One PPO update at the report's settings: 2048 steps, 10 epochs, minibatch 64 (320 gradient steps)."""
    assert (REPORT.steps_per_iteration, REPORT.epochs, REPORT.minibatch_size) == (STEPS, 10, 64)
    learner = UPDATES[implementation]()
    advantages, returns = compute_gae(real_rollout, REPORT.gamma, REPORT.gae_lambda, REPORT.reward_scale)

    def current_rollout():
        # The learner refuses a stale rollout (on-policy), so each round gets the learner's version.
        return (dataclasses.replace(real_rollout, policy_version=learner.version), advantages, returns), {}

    before = learner.weights().copy()
    stats = benchmark.pedantic(learner.update, setup=current_rollout, rounds=5, warmup_rounds=1)
    record_rate(STEPS)
    assert learner.steps_trained == STEPS * learner.version and learner.version >= 1
    assert np.isfinite([stats["policy_loss"], stats["value_loss"], stats["approx_kl"]]).all()
    assert not np.array_equal(before, learner.weights()), "the update left the weights unchanged"


def test_floor_counts_the_products_between_hidden_layers():
    """The floor's arithmetic, by hand: three products per pair of consecutive hidden layers, 2 FLOPs a multiply-add."""
    report = floor_products(POLICY, 64)
    assert report == (Product(64, 256, 256), Product(64, 256, 256), Product(256, 64, 256))
    assert sum(p.flops for p in report) == 3 * 2 * 64 * 256 * 256 == 25_165_824
    uneven = floor_products(PolicySpec(obs_dim=3, act_dim=1, hidden_sizes=(64, 32, 16)), 8)
    assert sum(p.flops for p in uneven) == 3 * 2 * 8 * 64 * 32 + 3 * 2 * 8 * 32 * 16 == 122_880
    assert floor_products(PolicySpec(obs_dim=3, act_dim=1, hidden_sizes=(256,)), 64) == ()  # no hidden-to-hidden layer


@pytest.mark.benchmark(group="ppo-update-floor")
def test_update_against_its_product_floor(benchmark, real_rollout, report_line):
    """Each kernel's update at the report preset against the compute floor (`benchmarks/product_floor.py`),
    alternated block by block in one run: each block times one whole update of each kernel and the floor's products
    for as many gradient steps, in an order that rotates between blocks. `extra_info` records milliseconds per
    minibatch step of each, and the median of the blocks' ratios to the floor (issue 24's goal: at most 1.6)."""
    advantages, returns = compute_gae(real_rollout, REPORT.gamma, REPORT.gae_lambda, REPORT.reward_scale)
    products = floor_products(POLICY, REPORT.minibatch_size)
    steps = REPORT.epochs * math.ceil(STEPS / REPORT.minibatch_size)  # KL stopping is off in the preset
    learners = {kernel: PPOLearner(LearnerSetup(REPORT.replace(kernel=kernel), POLICY, SEED)) for kernel in KERNELS}

    def update(learner: PPOLearner) -> float:
        """One update of the learner's current version; seconds per minibatch step."""
        before = learner.optimizer_steps
        started = time.perf_counter()
        learner.update(dataclasses.replace(real_rollout, policy_version=learner.version), advantages, returns)
        return (time.perf_counter() - started) / (learner.optimizer_steps - before)

    timers = {f"update_{kernel}": partial(update, learner) for kernel, learner in learners.items()}
    timers["floor"] = lambda: time_floor(products, steps) / steps
    for learner in learners.values():
        update(learner)  # warm-up: first-call allocations
    blocks = 1 if benchmark.disabled else FLOOR_BLOCKS
    per_step: dict[str, list[float]] = {name: [] for name in timers}
    names = list(timers)
    with threadpool_limits(torch.get_num_threads(), user_api="blas"):  # numba's products: numpy's BLAS, as the harness
        for block in range(blocks):
            for name in names[block % len(names) :] + names[: block % len(names)]:  # each first in a third of the blocks
                per_step[name].append(timers[name]())
    for learner in learners.values():  # the floor was timed for as many steps as each update took
        assert learner.optimizer_steps == steps * (1 + blocks), learner.optimizer_steps
    floor = np.array(per_step["floor"])
    ms = {name: 1e3 * float(np.median(seconds)) for name, seconds in per_step.items()}
    over_floor = {kernel: float(np.median(np.array(per_step[f"update_{kernel}"]) / floor)) for kernel in KERNELS}
    gflops = sum(p.flops for p in products) / ms["floor"] / 1e6
    benchmark.extra_info |= {f"{name}_ms_per_minibatch": value for name, value in ms.items()}
    benchmark.extra_info |= {f"update_{kernel}_over_floor_median": value for kernel, value in over_floor.items()}
    benchmark.extra_info |= {"floor_gflops_per_s": gflops, "minibatch_steps_per_update": steps,
                             "torch_threads": torch.get_num_threads()}  # fmt: skip
    shapes = " + ".join(f"{p.rows}x{p.inner}x{p.cols}" for p in products)
    report_line(f"PPO update, report preset, {torch.get_num_threads()} thread(s), median of {blocks} alternated blocks:")
    report_line(f"  floor ({shapes}): {ms['floor']:.3f} ms per minibatch step ({gflops:.0f} GFLOP/s)")
    for kernel in KERNELS:
        report_line(f"  kernel {kernel}: {ms[f'update_{kernel}']:.3f} ms per minibatch step, {over_floor[kernel]:.2f}x the floor")
    benchmark.pedantic(timers["update_numba"], rounds=1, iterations=1)  # the benchmark's own record: one more update


FLOOR_BLOCKS = 9


INFERENCE = {
    "numpy": InferencePolicy,
    "numpy-two-layer-reference": TwoLayerInferencePolicy,
    "torch-reference": TorchInferencePolicy,
}


@pytest.mark.benchmark(group="inference")
@pytest.mark.parametrize("implementation", INFERENCE)
@pytest.mark.parametrize("batch", [1, 8, 16, 64], ids=lambda b: f"batch{b}")
def test_inference_act(benchmark, record_rate, batch, implementation):
    """One policy call for `batch` env steps: numpy (what samplers run) against the torch reference it replaced,
    on the same weights and inputs; batch 8 is a vecenv, 16 central inference over 16 workers."""
    weights = np.random.default_rng(SEED).normal(0, 0.05, POLICY.num_params).astype(np.float32)
    policy = INFERENCE[implementation](POLICY)
    policy.load_flat(weights, 0)
    rng = np.random.default_rng(SEED)
    obs = rng.standard_normal((batch, POLICY.obs_dim), dtype=np.float32)
    noise = rng.standard_normal((batch, POLICY.act_dim), dtype=np.float32)
    with threadpool_limits(1, user_api="blas"):  # one thread each, as a worker runs (torch: set by the reference)
        got = benchmark(policy.act, obs, noise)
    record_rate(batch)
    # Both compute the same policy, within float32 rounding (tests/test_model.py states the bound).
    numpy_policy = InferencePolicy(POLICY)
    numpy_policy.load_flat(weights, 0)
    for name, value, want in zip(("actions", "log_probs", "values"), got, numpy_policy.act(obs, noise), strict=True):
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()), err_msg=name)


@pytest.mark.benchmark(group="inference-layer-list")
@pytest.mark.parametrize("batch", [1, 8], ids=lambda b: f"batch{b}")
def test_layer_list_costs_nothing(benchmark, batch):
    """Today's layer loop (issue 23) against the two-layer code it replaced, alternated block by block in one run so
    that the machine's load falls on both alike: `extra_info` records the median of the blocks' time ratios
    (loop / two-layer; the issue's goal is at most 1.05). The benchmark's own timing is the loop's."""
    weights = np.random.default_rng(SEED).normal(0, 0.05, POLICY.num_params).astype(np.float32)
    policies = {"loop": InferencePolicy(POLICY), "two-layer": TwoLayerInferencePolicy(POLICY)}
    for policy in policies.values():
        policy.load_flat(weights, 0)
    rng = np.random.default_rng(SEED)
    obs = rng.standard_normal((batch, POLICY.obs_dim), dtype=np.float32)
    noise = rng.standard_normal((batch, POLICY.act_dim), dtype=np.float32)
    ratios = []
    with threadpool_limits(1, user_api="blas"):
        for block in range(BLOCKS):
            seconds = {}
            for name, policy in sorted(policies.items(), reverse=block % 2 == 1):  # each goes first in half the blocks
                started = time.perf_counter()
                for _ in range(CALLS_PER_BLOCK):
                    policy.act(obs, noise)
                seconds[name] = time.perf_counter() - started
            ratios.append(seconds["loop"] / seconds["two-layer"])
        benchmark(policies["loop"].act, obs, noise)
    benchmark.extra_info["loop_over_two_layer_median"] = float(np.median(ratios))
    benchmark.extra_info["loop_over_two_layer_quartiles"] = [float(q) for q in np.percentile(ratios, [25, 75])]
    for got, want in zip(policies["loop"].act(obs, noise), policies["two-layer"].act(obs, noise), strict=True):
        np.testing.assert_array_equal(got, want)  # the same arithmetic: bit for bit the same policy


BLOCKS, CALLS_PER_BLOCK = 41, 500
