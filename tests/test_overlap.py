"""The `overlap` schedule: fragments carry the version they were sampled with, the weights really change
between fragments, PPO accepts exactly the lag the schedule creates, and the CLI reports what overlap buys."""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np
import pytest

from algorithms.base import LearnerSetup
from algorithms.config import PPOConfig
from algorithms.gae import compute_gae
from algorithms.policy import PolicySpec
from algorithms.ppo import PPOLearner
from backends import REGISTRY, create_backend
from backends.base import BackendSpec
from tests.test_backends import (
    CONFIGS,
    ENV,
    NUM_ENVS,
    POLICY,
    SEED,
    _param,
    assert_same_rollout,
    fragment_weights,
    make_spec,
    started,
)
from tests.test_cli import run_suite_text
from tests.test_ppo_update import on_policy_rollout

STEPS_PER_ENV = 100  # three requests: 300 steps per env, across Pendulum's 200-step truncation
OVERLAP = [_param(c) for c in CONFIGS if "overlap" in REGISTRY[c[0]].schedules and c[3] == "worker"]


def three_weights() -> list[np.ndarray]:
    """Three different weight vectors: a backend that kept the first would sample visibly differently."""
    return fragment_weights(count=3)


def overlap_requests(backend) -> list:
    """What the overlap schedule does with max_lag 1: the batch in hand lags the weights just sent."""
    w = three_weights()
    steps = STEPS_PER_ENV * backend.spec.num_envs
    backend.set_weights(w[0], 0)  # the first weights with a barrier
    backend.submit(steps)
    first = backend.take()  # sampled with 0
    backend.submit(steps)  # sampled with 0: the weights of version 1 are sent after it
    backend.set_weights(w[1], 1, wait=False)
    second = backend.take()
    backend.submit(steps)  # sampled with 1
    backend.set_weights(w[2], 2, wait=False)
    third = backend.take()
    return [first, second, third]


def test_every_remote_backend_can_overlap():
    assert {c[0] for c in CONFIGS if c[0] in ("multiprocessing", "ray_local", "ray_cluster")} <= {p.values[0][0] for p in OVERLAP}


@pytest.mark.parametrize("config", OVERLAP)
def test_overlapped_fragments_carry_their_version_and_match_vecenv(config, request):
    spec = dataclasses.replace(make_spec(config, request), schedule="overlap")
    backend = started(spec)
    try:
        got = overlap_requests(backend)
        with pytest.raises(RuntimeError, match="in flight"):  # a barrier behind queued requests would deadlock the pipeline
            backend.submit(STEPS_PER_ENV * spec.num_envs)
            backend.set_weights(three_weights()[0], 3, wait=True)
    finally:
        backend.close()
    assert [c.fragment_versions for c in got] == [(0,) * spec.workers, (0,) * spec.workers, (1,) * spec.workers]
    assert [c.rollout.policy_version for c in got] == [0, 0, 1]
    # The same envs stepped in one process with the same weights in the same order: versions 0, 0, 1.
    w = three_weights()
    with create_backend(BackendSpec("vecenv", 1, NUM_ENVS)) as reference:
        reference.start(ENV, POLICY, SEED)
        expected = []
        for weights, version in ((w[0], 0), (w[0], 0), (w[1], 1)):
            reference.set_weights(weights, version)
            expected.append(reference.collect(STEPS_PER_ENV * NUM_ENVS).rollout)
    assert got[1].rollout.truncations.any()  # step 200 of every env falls in the second request
    for actual, want in zip(got, expected, strict=True):
        assert_same_rollout(actual.rollout, want)


def test_ppo_takes_the_lag_the_schedule_allows_and_no_more():
    spec, config = PolicySpec(3, 1, (32, 32)), PPOConfig(hidden_sizes=(32, 32), steps_per_iteration=256, epochs=1)
    rollout = on_policy_rollout(spec, config)
    learner = PPOLearner(LearnerSetup(config, spec, seed=0, max_policy_lag=1))
    learner.train(rollout)  # version 0 -> 1
    stats = learner.train(rollout)  # sampled with 0, learner at 1: lag 1, allowed
    assert stats["initial_kl"] > 0  # the batch is already off-policy for the learner
    with pytest.raises(RuntimeError, match="at most 1"):
        learner.train(rollout)  # lag 2


def test_decoupled_objective_is_plain_ppo_until_the_clip_bites():
    """Hilton et al.'s objective w * clipped(pi / pi_prox) has the gradient of plain PPO's clipped(pi / pi_behav)
    wherever neither clips (w * grad(pi) / pi_prox = grad(pi) / pi_behav): it differs only where a stale batch
    puts the ratio against the behaviour policy outside the clip range."""
    spec = PolicySpec(3, 1, (32, 32))
    configs = [
        PPOConfig(hidden_sizes=(32, 32), steps_per_iteration=256, epochs=4, learning_rate=3e-3, decoupled=d)
        for d in (False, True)
    ]
    rollout = on_policy_rollout(spec, configs[0])
    plain, decoupled = (PPOLearner(LearnerSetup(c, spec, seed=0, max_policy_lag=1)) for c in configs)
    fresh = plain.train(rollout), decoupled.train(rollout)
    # A fresh batch: proximal = behaviour, every weight 1: the same update up to float rounding.
    np.testing.assert_allclose(plain.weights(), decoupled.weights(), rtol=0, atol=1e-6)
    assert fresh[0]["initial_kl"] == pytest.approx(0, abs=1e-6)
    stale = plain.train(rollout), decoupled.train(rollout)  # the same batch, now one version old
    assert stale[0]["initial_clip_fraction"] > 0.01, "the learning rate should move the policy past the clip range"
    assert np.abs(plain.weights() - decoupled.weights()).max() > 1e-3


@pytest.mark.parametrize("kernel", ["torch", "numba"])
def test_ewma_clips_each_minibatch_against_the_moving_average_of_the_weights(kernel):
    """PPO-EWMA: before optimiser step j the anchor is the policy whose weights are sum_i d^(j-i) w_i / sum_i d^(j-i)
    over the weights w_0..w_j the learner has held, and each advantage (standardised per minibatch) is weighted by
    min(that policy's probability / the behaviour policy's, cap). Recomputed here from the weights alone: the average
    in numpy, the log-probability by numpy inference and scipy's normal density, the shuffle and standardisation by
    hand."""
    from scipy.stats import norm

    from algorithms.inference import InferencePolicy

    decay, cap, size, epochs = 0.7, 1.02, 64, 2
    spec = PolicySpec(3, 1, (32, 32))
    config = PPOConfig(hidden_sizes=(32, 32), steps_per_iteration=256, minibatch_size=size, epochs=epochs,
                       learning_rate=3e-3, decoupled=True, ewma_decay=decay, importance_weight_cap=cap, kernel=kernel)  # fmt: skip
    rollout = on_policy_rollout(spec, config)
    learner = PPOLearner(LearnerSetup(config, spec, seed=0))
    taken, step = [], learner._step

    def recording_step(*minibatch):
        taken.append((learner.flat.numpy().copy(), *(m.numpy().copy() for m in minibatch)))
        return step(*minibatch)

    learner._step = recording_step
    learner.train(rollout)
    assert len(taken) == epochs * 256 // size

    advantages = compute_gae(rollout, config.gamma, config.gae_lambda)[0].reshape(-1)
    behaviour, obs, actions = rollout.log_probs.reshape(-1), rollout.obs.reshape(256, 3), rollout.actions.reshape(256, 1)
    shuffle, inference, weights, capped = np.random.default_rng(0), InferencePolicy(spec), [], []
    for epoch in range(epochs):
        order = shuffle.permutation(256)
        for k in range(256 // size):
            j = epoch * 256 // size + k
            weights.append(taken[j][0].astype(np.float64))
            average = sum(decay ** (j - i) * w for i, w in enumerate(weights)) / sum(decay ** (j - i) for i in range(j + 1))
            inference.load_flat(average.astype(np.float32), 0)
            rows = order[k * size : (k + 1) * size]
            mean = inference.forward(obs[rows])[0][:, 0]
            proximal = norm.logpdf(actions[rows, 0], mean, np.exp(average[0]))
            np.testing.assert_allclose(taken[j][3], proximal, rtol=0, atol=2e-5)  # the anchor
            block = advantages[rows]
            standardised = (block - block.mean()) / (block.std(ddof=1) + 1e-8)
            weight = np.minimum(np.exp(proximal - behaviour[rows]), cap)
            np.testing.assert_allclose(taken[j][4], standardised * weight, rtol=1e-4, atol=1e-5)
            capped.append(weight == cap)
    capped = np.concatenate(capped)
    assert 0 < capped.mean() < 1, "both sides of the cap should occur"


def test_ewma_needs_the_decoupled_objective_and_a_decay_below_one():
    with pytest.raises(ValueError, match="set decoupled = true"):
        PPOConfig(ewma_decay=0.9)
    for decay in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="ewma_decay"):
            PPOConfig(decoupled=True, ewma_decay=decay)


def test_recompute_advantages_changes_only_the_values_gae_starts_from():
    """On a fresh batch the learner's critic is the sampler's: the same update. On a stale one, GAE runs on the
    learner's values now (checked against compute_gae on those values), and nothing else about the update moves."""
    spec = PolicySpec(3, 1, (32, 32))
    configs = [PPOConfig(hidden_sizes=(32, 32), steps_per_iteration=256, epochs=2, recompute_advantages=r) for r in (False, True)]
    rollout = on_policy_rollout(spec, configs[0])
    plain, recomputing = (PPOLearner(LearnerSetup(c, spec, seed=0, max_policy_lag=1)) for c in configs)
    np.testing.assert_allclose(plain.advantages(rollout)[1], recomputing.advantages(rollout)[1], rtol=0, atol=1e-5)
    plain.train(rollout), recomputing.train(rollout)
    np.testing.assert_allclose(plain.weights(), recomputing.weights(), rtol=0, atol=1e-6)
    now = recomputing.current_policy(rollout)[1]
    assert np.abs(now - rollout.values).max() > 1e-3  # the critic moved: the sampler's values are stale
    advantages, returns = recomputing.advantages(rollout)
    want_advantages, want_returns = compute_gae(dataclasses.replace(rollout, values=now), 0.99, 0.95)
    np.testing.assert_allclose(advantages, want_advantages, rtol=1e-6)
    np.testing.assert_allclose(returns, want_returns, rtol=1e-6)
    np.testing.assert_array_equal(plain.advantages(rollout)[0], compute_gae(rollout, 0.99, 0.95)[0])  # plain: recorded


SUITE = """
[suite]
name = "overlap"
tables = ["speed", "phases", "overlap"]
baseline = "multiprocessing"
[ppo]
steps_per_iteration = 256
epochs = 2
hidden_sizes = [32, 32]
[measure]
warmup_iterations = 1
iterations = 3
repeats = 1
[[cases]]
backend = "multiprocessing"
workers = 2
schedule = ["sync", "overlap"]

[[cases]]
backend = "multiprocessing"
workers = 2
schedule = "overlap"
label = "multiprocessing decoupled KL stop"
ppo = { decoupled = true, target_kl = 0.5 }
"""


def test_overlap_through_the_cli_records_lag_kl_and_the_learners_time(tmp_path):
    run_dir, run = run_suite_text(tmp_path, SUITE)
    sync, overlap, corrected = run["cases"]
    assert (sync["backend"]["schedule"], overlap["backend"]["schedule"]) == ("sync", "overlap")
    for case, later_lag in ((sync, 0), (overlap, 1)):
        iterations = case["runs"][0]["iterations"]
        assert [it["policy_lag"]["max"] for it in iterations] == [0] + [later_lag] * (len(iterations) - 1)
        for it in iterations:
            assert it["total_s"] == pytest.approx(it["between_s"] + it["sync_s"] + it["collect_s"] + it["train_s"])
            assert it["worker_compute_s"] > 0 and it["learner"]["initial_clip_fraction"] >= 0
            # 256 steps in minibatches of 64 (PPOConfig's default), 2 epochs: 8 optimiser steps a version
            lag = it["policy_lag"]
            assert [lag[f"sgd_steps_{k}"] for k in ("min", "mean", "max")] == [8 * lag["min"], 8 * lag["mean"], 8 * lag["max"]]
        assert iterations[0]["between_s"] == 0 and all(it["between_s"] > 0 for it in iterations[1:])  # the record, progress
        assert [it["train_wall_s"] for it in iterations] == pytest.approx(np.cumsum([it["total_s"] for it in iterations]))
        kl = [it["learner"]["initial_kl"] for it in iterations[1:]]
        assert all(k > 1e-6 for k in kl) if later_lag else all(abs(k) < 1e-6 for k in kl)
    report = (run_dir / "report.md").read_text()
    assert "### What overlap buys" in report and "multiprocessing overlap" in report
    # an overlap case with the learner's corrections is compared with the same sync case
    rows = report.split("### What overlap buys")[1].split("###")[0]
    assert "| multiprocessing decoupled KL stop " in rows and "| multiprocessing overlap " in rows
    assert corrected["runs"][0]["iterations"][-1]["learner"]["optimizer_steps"] <= 8


@pytest.mark.parametrize("backend_name", ["multiprocessing", "ray_local"])
def test_deeper_pipeline_lags_by_max_lag_and_trains(backend_name):
    """max_lag = 2: two requests in flight, so batches lag 0, 1, then 2 versions; multiprocessing's
    weight slots (max_lag + 1 of them) must never hand a worker a version being overwritten."""
    from harness.schedule import OverlapSchedule

    config = PPOConfig(hidden_sizes=POLICY.hidden_sizes, steps_per_iteration=64, minibatch_size=16, epochs=1)
    spec = BackendSpec(backend_name, 2, 2, schedule="overlap", max_lag=2, options={"timeout_s": 60})
    learner = PPOLearner(LearnerSetup(config, POLICY, seed=0, max_policy_lag=2))
    # Workers slower than the learner (5 ms a step, 16 steps a fragment): new weights are written while
    # the loads of older versions still wait behind queued requests, which is when a shared slot would clash.
    backend = started(spec, dataclasses.replace(ENV, step_cost_ms=5.0))
    try:
        schedule = OverlapSchedule(learner, backend, config.steps_per_iteration, planned=6)
        done = [schedule.iteration(i) for i in range(3)]
        schedule.pause()  # as before an evaluation: both batches in flight are taken, none is lost or re-asked
        assert not backend.requests
        schedule.resume()
        done += [schedule.iteration(i) for i in range(3, 6)]
        assert not backend.requests  # nothing asked for that no iteration trained on
    finally:
        backend.close()
    assert [d.lags for d in done] == [(0, 0), (1, 1), (2, 2), (2, 2), (2, 2), (2, 2)]
    # 64 steps in minibatches of 16, one epoch: 4 optimiser steps a version
    assert [d.sgd_lags for d in done] == [(0, 0), (4, 4), (8, 8), (8, 8), (8, 8), (8, 8)]
    assert learner.version == 6 and learner.optimizer_steps == 24 and all(d.collected.rollout.num_steps == 64 for d in done)


@pytest.mark.parametrize("config", OVERLAP)
def test_publishing_during_the_update_samples_each_part_with_the_weights_published_before_it(config, request):
    """publish_every = "epoch" (issue 23), 3 epochs of 2 minibatches, two batches in flight: each batch is asked for
    in 3 parts, the first as an update starts and one behind each epoch's weights. Every part's values are those of
    the weights broadcast under its number (the critic of what the worker really loaded), parts use different
    weights, and each lags by the SGD steps since its weights: 12 - 2p for part p once the pipeline is full. Workers
    are slower than the learner (5 ms a step), so loads wait behind requests: a backend keeping too few weight
    versions (multiprocessing's slots) would hand a worker one already overwritten."""
    from algorithms.inference import InferencePolicy
    from harness.schedule import OverlapSchedule, split_in_parts

    name, workers, envs_per_worker, _ = config
    base = make_spec(config, request)
    spec = dataclasses.replace(base, schedule="overlap", max_lag=2, publish_every="epoch", publications_per_batch=3)
    steps = 12 * spec.num_envs
    settings = PPOConfig(hidden_sizes=POLICY.hidden_sizes, steps_per_iteration=steps, minibatch_size=steps // 2, epochs=3)
    assert settings.publications("epoch") == 3 and split_in_parts(steps, spec.num_envs, 3) == [4 * spec.num_envs] * 3
    learner = PPOLearner(LearnerSetup(settings, POLICY, seed=0, max_policy_lag=2, publish_every="epoch"))
    backend = started(spec, dataclasses.replace(ENV, step_cost_ms=5.0))
    broadcast: dict[int, np.ndarray] = {}
    send = backend.set_weights

    def recording(weights, version, wait=True):
        broadcast[version] = weights.copy()
        return send(weights, version, wait)

    backend.set_weights = recording
    try:
        schedule = OverlapSchedule(learner, backend, steps, planned=5)
        done = [schedule.iteration(i) for i in range(5)]
        assert not backend.requests
    finally:
        backend.close()
    # The pipeline's first two batches were asked for whole with the first weights; later ones in parts.
    assert [d.sgd_lags for d in done] == [(0,) * 3 * workers, (6,) * 3 * workers] + [
        (12,) * workers + (10,) * workers + (8,) * workers
    ] * 3
    assert [d.lags for d in done] == [(0,) * 3 * workers, (1,) * 3 * workers] + [(2,) * 3 * workers] * 3
    assert [d.collected.rollout.policy_version for d in done] == [0, 0, 0, 1, 2]  # the learner's versions, not broadcasts
    policy = InferencePolicy(POLICY)
    for d in done[2:]:
        numbers = d.collected.fragment_versions
        assert len(set(numbers)) == 3  # one broadcast per part, all different
        rollout = d.collected.rollout
        for part in range(3):
            rows = slice(4 * part, 4 * part + 4)
            for worker in range(workers):
                number = numbers[part * workers + worker]
                columns = spec.worker_env_ids(worker)
                policy.load_flat(broadcast[number], number)
                obs = rollout.obs[rows][:, columns].reshape(-1, POLICY.obs_dim)
                expected = policy.value(obs).reshape(4, len(columns))
                np.testing.assert_allclose(rollout.values[rows][:, columns], expected, rtol=1e-5, atol=1e-6)
        assert not np.array_equal(broadcast[numbers[0]], broadcast[numbers[-1]])


def test_publish_every_splits_the_batch_and_counts_its_publications():
    """By hand: 2048 steps in minibatches of 64 are 32 a epoch; 10 epochs are 320 optimiser steps, so publishing
    every 100 makes 4 versions an update (after 100, 200, 300, and its end). 8 envs of 256 steps in 10 parts:
    six of 26 steps and four of 25."""
    from harness.schedule import split_in_parts

    settings = PPOConfig(steps_per_iteration=2048, minibatch_size=64, epochs=10)
    assert [settings.publications(p) for p in ("iteration", "epoch", 100, 32, 1)] == [1, 10, 4, 10, 320]
    assert split_in_parts(2048, 8, 10) == [26 * 8] * 6 + [25 * 8] * 4
    assert sum(split_in_parts(2048, 8, 10)) == 2048
    with pytest.raises(ValueError, match="more than the 4 steps per env"):
        split_in_parts(32, 8, 5)


@pytest.mark.parametrize(("publish_every", "expected"), [("epoch", [8, 16]), (3, [3, 6, 9, 12, 15, 18, 21])])
def test_the_learner_publishes_at_its_points_and_not_at_its_end(publish_every, expected):
    """3 epochs of 8 minibatches (24 optimiser steps): after epochs 1 and 2, or after every 3rd step but the 24th (its
    end is the schedule's own broadcast); each time the weights then, which the next step changes."""
    spec = PolicySpec(3, 1, (32, 32))
    settings = PPOConfig(hidden_sizes=(32, 32), steps_per_iteration=256, minibatch_size=32, epochs=3, learning_rate=3e-3)
    learner = PPOLearner(LearnerSetup(settings, spec, seed=0, publish_every=publish_every))
    published: list[tuple[int, np.ndarray]] = []
    learner.on_publish = lambda weights, steps: published.append((steps, weights))
    rollout = on_policy_rollout(spec, settings)
    advantages, returns = compute_gae(rollout, settings.gamma, settings.gae_lambda)
    before = learner.weights().copy()
    learner.update(rollout, advantages, returns)
    assert [steps for steps, _ in published] == expected and learner.optimizer_steps == 24
    snapshots = [before, *(w for _, w in published), learner.weights()]
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(snapshots))  # each a copy of its moment


def test_an_evaluation_gives_overlap_no_sampling_off_the_clock():
    """A pause (before an evaluation) takes the batch in flight first, so a slow evaluation cannot sample it for
    free: from its dispatch to the learner taking it, the clock runs at least as long as the workers sampled it
    (2 workers, 128 sleeping steps of 3 ms each: at least 0.384 s), however long the evaluation took."""
    from harness.schedule import OverlapSchedule

    config = PPOConfig(hidden_sizes=POLICY.hidden_sizes, steps_per_iteration=256, epochs=1)
    spec = BackendSpec("multiprocessing", 2, 1, schedule="overlap", options={"timeout_s": 60})
    learner = PPOLearner(LearnerSetup(config, POLICY, seed=0, max_policy_lag=1))
    backend = started(spec, dataclasses.replace(ENV, step_cost_ms=3.0))
    try:
        schedule = OverlapSchedule(learner, backend, config.steps_per_iteration, planned=3)
        first = schedule.iteration(0)  # trains on batch A, having asked for batch B
        schedule.pause()
        assert not backend.requests  # B was taken: no worker samples during what follows
        time.sleep(1.0)  # a slow evaluation, off the clock
        schedule.resume()
        second = schedule.iteration(1)  # trains on B
        third = schedule.iteration(2)
    finally:
        backend.close()
    sampling_b = second.collected.worker_compute_s
    assert sampling_b >= 128 * 0.003
    # B's dispatch came before first's train; the clock from there to taking B, which its sampling fits inside:
    on_clock = first.train_s + first.sync_s + second.between_s + second.collect_s
    assert on_clock >= sampling_b, (on_clock, sampling_b)
    assert second.between_s < 1.0  # the evaluation itself is on no clock
    for d in (first, second, third):
        assert d.total_s == pytest.approx(d.between_s + d.sync_s + d.collect_s + d.train_s)
