"""Weight sync: `set_weights` to 4 worker processes, from the call to every worker holding the new version.

`env_steps_per_s` here is the ceiling sync alone would put on training: 2048
steps per iteration over the seconds of one sync. In-process backends and
central inference have nothing to sync and are left out.
"""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest

from algorithms.inference import InferencePolicy
from backends.base import Backend, BackendSpec
from benchmarks.common import POLICY, STEPS, initial_weights, started_backend

WORKERS = 4


@pytest.fixture(scope="module", params=["multiprocessing", "ray_local"])
def remote_backend(request):
    yield from started_backend(BackendSpec(request.param, WORKERS, 1, "worker", {"timeout_s": 60}))


def measured_sync_bytes(backend: Backend, weights: np.ndarray, version: int) -> int:
    """What one blocking broadcast serializes, measured here the way each transport counts it."""
    if backend.spec.name == "ray_local":  # the object `ray.put` stores, once
        from backends.ray_backend import serialized_size

        return serialized_size(weights)
    # The shared-memory slot and its version, written once, plus a pickled control message each way per worker.
    messages = len(pickle.dumps(("load", version, True), protocol=5)) + len(pickle.dumps(("loaded", version), protocol=5))
    return weights.nbytes + np.dtype(np.int64).itemsize + WORKERS * messages


@pytest.mark.benchmark(group="weight-sync")
def test_set_weights(benchmark, record_rate, remote_backend):
    versions = itertools.count(1)
    sent: dict[int, np.ndarray] = {}

    def sync():
        # New values every round, as training sends: a worker that kept an old buffer, or took the version
        # without the weights, is caught below by what it samples.
        version = next(versions)
        sent[version] = np.roll(initial_weights(), version) * (1 + 0.01 * version)
        return remote_backend.set_weights(sent[version], version)

    report = benchmark.pedantic(sync, rounds=50, warmup_rounds=1)
    record_rate(STEPS, per="iteration")
    last = max(sent)
    benchmark.extra_info |= {"workers": WORKERS, "bytes_per_sync": report.bytes_sent}
    assert report.bytes_sent == measured_sync_bytes(remote_backend, sent[last], last) < sent[last].nbytes * WORKERS
    assert report.bytes_network == 0  # one machine
    # Every worker holds the last weights, not only their version: the values it recorded for the states it
    # visited are the last weights' values of those states.
    rollout = remote_backend.collect(WORKERS * 8).rollout
    policy = InferencePolicy(POLICY)
    policy.load_flat(sent[last], last)
    assert rollout.policy_version == last
    expected = policy.value(rollout.obs.reshape(-1, POLICY.obs_dim)).reshape(rollout.values.shape)
    np.testing.assert_allclose(rollout.values, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))
    first = InferencePolicy(POLICY)  # the weights the fixture started with: the check can tell them apart
    first.load_flat(initial_weights(), 0)
    assert not np.allclose(first.value(rollout.obs.reshape(-1, POLICY.obs_dim)), expected.reshape(-1))
