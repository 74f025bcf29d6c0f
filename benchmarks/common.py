"""Constants and helpers the benchmark modules share (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from algorithms.model import ActorCritic, flatten_weights
from backends import create_backend
from backends.base import Backend, BackendSpec, PolicySpec
from backends.envs import EnvSpec
from tests.conftest import wait_for_no_children

ENV = EnvSpec()
POLICY = PolicySpec(obs_dim=3, act_dim=1, hidden_sizes=(256, 256))  # the report's network
SEED = 0
STEPS = 2048  # the report's steps per iteration


def initial_weights() -> np.ndarray:
    """The flat weights a fresh learner would broadcast first (fixed seed)."""
    with torch.random.fork_rng(devices=[]):  # leave the global generator as it was
        torch.manual_seed(SEED)
        return flatten_weights(ActorCritic(POLICY))


def started_backend(spec: BackendSpec) -> Iterator[Backend]:
    """Body of a backend fixture: start, load version 0, yield; then close and check that no process is left."""
    backend = create_backend(spec)
    try:
        backend.start(ENV, POLICY, SEED)
        backend.set_weights(initial_weights(), 0)
        yield backend
    finally:
        backend.close()
    left = wait_for_no_children()
    assert not left, f"{spec.name} left processes behind: {[p.pid for p in left]}"
