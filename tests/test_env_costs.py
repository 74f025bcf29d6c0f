"""Env costs that look like real envs (issue 21): each distribution against scipy's, the slow envs by hand,
the same costs for the same env wherever it lives, a reset cost paid on every reset, and bad costs refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from backends.envs import STEP_COST_METER, CostModel, EnvSpec, make_env
from backends.sampling import EnvBlock

DRAWS = 20_000


def _draws(spec: EnvSpec, env_index: int = 0, seed: int = 0, count: int = DRAWS) -> np.ndarray:
    model = CostModel(spec, env_index, seed)
    return np.array([model.draw_ms() for _ in range(count)])


def test_lognormal_costs_follow_scipys_lognormal_at_the_asked_mean_and_cv():
    mean_ms, cv = 2.0, 0.8
    draws = _draws(EnvSpec(step_cost_ms=mean_ms, step_cost_distribution="lognormal", step_cost_cv=cv))
    # scipy's parametrisation, from the mean and cv by hand: sigma^2 = ln(1 + cv^2), scale = mean / sqrt(1 + cv^2).
    sigma = math.sqrt(math.log(1 + cv**2))
    reference = stats.lognorm(s=sigma, scale=mean_ms / math.sqrt(1 + cv**2))
    assert reference.mean() == pytest.approx(mean_ms) and reference.std() / reference.mean() == pytest.approx(cv)
    assert stats.kstest(draws, reference.cdf).pvalue > 1e-3
    # ...and a model off by 10% in its mean would fail the same test.
    assert stats.kstest(draws * 1.1, reference.cdf).pvalue < 1e-6


def test_pareto_costs_follow_scipys_pareto_at_the_asked_mean_and_cv():
    mean_ms, cv = 1.0, 1.5
    draws = _draws(EnvSpec(step_cost_ms=mean_ms, step_cost_distribution="pareto", step_cost_cv=cv))
    shape = 1 + math.sqrt(1 + 1 / cv**2)  # cv^2 = 1 / (a (a - 2)) solved for a
    reference = stats.pareto(b=shape, scale=mean_ms * (shape - 1) / shape)
    assert reference.mean() == pytest.approx(mean_ms) and reference.std() / reference.mean() == pytest.approx(cv)
    assert stats.kstest(draws, reference.cdf).pvalue > 1e-3
    assert draws.min() >= mean_ms * (shape - 1) / shape  # Pareto I: nothing below its scale
    assert stats.kstest(draws * 1.1, reference.cdf).pvalue < 1e-6


def test_constant_costs_are_the_mean():
    assert set(_draws(EnvSpec(step_cost_ms=0.7), count=50)) == {0.7}


def test_the_slow_envs_are_the_last_of_every_one_over_f_and_cost_k_times_more():
    spec = EnvSpec(step_cost_ms=1.0, slow_env_fraction=1 / 8, slow_env_factor=10.0, reset_cost_ms=2.0)
    assert [i for i in range(24) if spec.is_slow(i)] == [7, 15, 23]
    assert [i for i in range(8) if EnvSpec(slow_env_fraction=0.5).is_slow(i)] == [1, 3, 5, 7]
    assert CostModel(spec, 7, 0).mean_ms == 10.0 and CostModel(spec, 6, 0).mean_ms == 1.0
    assert CostModel(spec, 15, 0).reset_ms == 20.0
    # 16 envs, two of them 10x: (14 + 20) / 16 ms per step on average.
    assert spec.mean_step_cost_ms(16) == pytest.approx(34 / 16)


def test_each_env_draws_its_own_costs_the_same_wherever_it_lives():
    spec = EnvSpec(step_cost_ms=1.0, step_cost_distribution="lognormal", step_cost_cv=1.0)
    np.testing.assert_array_equal(_draws(spec, 3, 7, 100), _draws(spec, 3, 7, 100))
    assert not np.array_equal(_draws(spec, 3, 7, 100), _draws(spec, 4, 7, 100))  # another env
    assert not np.array_equal(_draws(spec, 3, 7, 100), _draws(spec, 3, 8, 100))  # another run seed
    # An env inside a block of four draws what it draws alone: the block passes each env its global index.
    block = EnvBlock(spec, np.arange(2, 6), seed=7)
    try:
        wrapped = block.vec.envs[1]  # global env 3
        assert wrapped.costs.generator.bit_generator.state == CostModel(spec, 3, 7).generator.bit_generator.state
    finally:
        block.close()


def test_reset_cost_is_paid_on_every_reset_and_steps_pay_theirs():
    env = make_env(EnvSpec(reset_cost_ms=5.0, step_cost_ms=1.0, step_cost_kind="sleep"), env_index=0, seed=0)
    before = STEP_COST_METER.reading()
    env.reset(seed=0)
    env.reset(seed=1)
    for _ in range(3):
        env.step(np.zeros(1, np.float32))
    paid = STEP_COST_METER.reading() - before
    env.close()
    assert paid.steps == 3  # resets are paid, not counted as steps
    assert paid.seconds >= 2 * 0.005 + 3 * 0.001


def test_an_env_without_cost_is_not_wrapped():
    env = make_env(EnvSpec())
    assert not hasattr(env, "costs")
    env.close()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"step_cost_distribution": "weibull"}, "step_cost_distribution must be one of constant, lognormal, pareto"),
        ({"step_cost_distribution": "lognormal"}, "step_cost_cv > 0 goes with"),
        ({"step_cost_cv": 0.5}, "step_cost_cv > 0 goes with"),
        ({"step_cost_cv": -1.0, "step_cost_distribution": "pareto"}, "step_cost_cv must be a finite number >= 0"),
        ({"reset_cost_ms": -1.0}, "reset_cost_ms must be a finite number >= 0"),
        ({"slow_env_fraction": 1.0}, r"slow_env_fraction must be in \[0, 1\)"),
        ({"slow_env_factor": 0.5}, "slow_env_factor must be a finite number >= 1"),
    ],
)
def test_bad_costs_are_refused_in_one_line(fields, message):
    with pytest.raises(ValueError, match=message):
        EnvSpec(step_cost_ms=1.0, **fields)
