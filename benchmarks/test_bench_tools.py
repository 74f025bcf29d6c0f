"""EnvPool against vecenv, alternated in one run (issue 21's goal: EnvPool sync at 64 envs samples at least twice
as fast as vecenv's 64; at 8 envs, the ratio is reported).

Both collect 2,048 steps of Pendulum with the report's network and numpy inference, central in the learner's
process. Rounds alternate the two backends, so a slower moment of a shared machine falls on both; the figure is the
ratio of their median seconds per collect. It is printed and kept in `extra_info` (`pytest benchmarks -k tools -s`),
not asserted: a speed goal lives in a benchmark, not in a test that a busy machine could fail.
"""

from __future__ import annotations

import statistics
import time

import pytest

from backends.base import BackendSpec
from benchmarks.common import POLICY, STEPS, started_backend

ROUNDS = 15


@pytest.mark.parametrize("envs", [8, 64])
def test_envpool_over_vecenv_sampling_ratio(benchmark, envs):
    vec = started_backend(BackendSpec("vecenv", 1, envs))
    pool = started_backend(BackendSpec("envpool", 1, envs, "central"))
    backends = {"vecenv": next(vec), "envpool": next(pool)}
    try:
        seconds: dict[str, list[float]] = {name: [] for name in backends}
        for backend in backends.values():
            backend.collect(STEPS)  # warm-up, untimed
        rounds = ROUNDS if not benchmark.disabled else 1
        for _ in range(rounds):
            for name, backend in backends.items():
                began = time.perf_counter()
                collected = backend.collect(STEPS)
                seconds[name].append(time.perf_counter() - began)
                assert collected.rollout.num_steps == STEPS
                assert collected.rollout.obs.shape == (STEPS // envs, envs, POLICY.obs_dim)
    finally:
        for generator in (vec, pool):
            next(generator, None)  # the fixture body's clean-up: close, then check that no process is left
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    ratio = medians["vecenv"] / medians["envpool"]
    benchmark.extra_info |= {"envs": envs, "rounds": rounds, "ratio_envpool_over_vecenv": ratio,
                             **{f"{name}_steps_per_s": STEPS / m for name, m in medians.items()}}  # fmt: skip
    print(f"\n{envs} envs, {rounds} alternated rounds: vecenv {STEPS / medians['vecenv']:,.0f} steps/s, "
          f"envpool {STEPS / medians['envpool']:,.0f} steps/s: envpool/vecenv {ratio:.2f}x")  # fmt: skip
    assert ratio > 0
