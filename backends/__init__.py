"""Sampling backends, registered by the name a suite uses.

Imports are lazy: `ray` is imported only when a Ray backend is created.
A new backend is one module plus one entry in `REGISTRY`; the entry says everything
the rest of the code needs to know about it, and the conformance tests
(tests/test_backends.py) run every entry.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import multiprocessing
from dataclasses import dataclass
from typing import Annotated, Literal

from annotated_types import Gt, Predicate
from typing_extensions import TypedDict  # pydantic needs typing_extensions' TypedDict before Python 3.12

from backends.base import ON_WORKER_FAILURE, Backend, BackendSpec

# --- options: what a suite may set in a case's `options` table, per backend -------------------------
# Plain TypedDicts with `annotated_types` constraints: harness.suite validates a case's table against
# them with pydantic, while workers that import this package never import pydantic.

PositiveFinite = Annotated[float, Gt(0), Predicate(math.isfinite)]


class NoOptions(TypedDict, total=False):
    """A backend that takes no options."""


class WaitOptions(TypedDict, total=False):
    """Options of every backend whose workers live in other processes."""

    timeout_s: PositiveFinite
    """How long any wait on a worker may take before it counts as hung (default 120 s)."""
    on_worker_failure: Literal[ON_WORKER_FAILURE]
    """A worker that dies or hangs: `fail` the run (default), or `restart` it (a new worker with the same envs and
    seeds samples its share again; worker inference only)."""
    max_restarts: Annotated[int, Gt(0)]
    """Under `restart`: restarts one run may make; the next lost worker fails it (default 3)."""


class MultiprocessingOptions(WaitOptions, total=False):
    start_method: Literal[tuple(multiprocessing.get_all_start_methods())]
    """How worker processes start: one of the methods this platform offers (default forkserver)."""


class RayLocalOptions(WaitOptions, total=False):
    num_cpus: Annotated[int, Gt(0)]
    """CPUs the embedded Ray instance may schedule (default: every core)."""


class RayClusterOptions(WaitOptions, total=False):
    address: str
    """The cluster's address, `host:port` (default: RAY_ADDRESS, --address, or `harness cluster up`'s cluster)."""


@dataclass(frozen=True)
class BackendEntry:
    """How to find a backend, what a suite may set for it, and how the conformance tests run it."""

    target: str
    """`module:Class`."""
    summary: str
    remote: bool = False
    """Workers live in other processes: weight sync and trajectory transfer cross a process boundary
    and are measured (sync bytes, transfer time, worker compute)."""
    inference_modes: tuple[str, ...] = ("worker",)
    options_model: type = NoOptions
    """TypedDict of the keys a case's `options` table may set, with their types and ranges."""
    multi_worker: bool = True
    needs: str | None = None
    """Module that must be importable for the backend to be available."""
    schedules: tuple[str, ...] = ("sync",)
    """`overlap` needs workers that sample while the learner trains: other processes, worker inference."""
    cluster: bool = False
    """Runs on an existing Ray cluster found by its `address`; its conformance tests need the `ray_cluster`
    fixture's cluster (marked `ray_cluster`)."""
    conformance: tuple[tuple[str, int, int], ...] = (("worker", 1, 4),)
    """What tests/test_backends.py runs it with: (inference mode, workers, envs per worker), 4 envs in
    all, every inference mode at least once."""

    @property
    def options(self) -> tuple[str, ...]:
        """Keys a suite may give in the case's `options` table."""
        return tuple(self.options_model.__annotations__)


REGISTRY: dict[str, BackendEntry] = {
    "serial": BackendEntry("backends.serial:SerialBackend", "one process, one policy call per env step", multi_worker=False),
    "vecenv": BackendEntry(
        "backends.vecenv:VecEnvBackend", "N envs in one process, batched policy inference", multi_worker=False
    ),
    "multiprocessing": BackendEntry(
        "backends.multiprocessing_backend:MultiprocessingBackend",
        "worker processes; weights through shared memory",
        remote=True,
        inference_modes=("worker", "central"),
        options_model=MultiprocessingOptions,
        schedules=("sync", "overlap"),
        conformance=(("worker", 2, 2), ("central", 4, 1)),
    ),
    "ray_local": BackendEntry(
        "backends.ray_backend:RayLocalBackend",
        "Ray actors in an embedded Ray instance (ray.init)",
        remote=True,
        inference_modes=("worker", "central"),
        options_model=RayLocalOptions,
        needs="ray",
        schedules=("sync", "overlap"),
        conformance=(("worker", 4, 1), ("central", 2, 2)),
    ),
    "ray_cluster": BackendEntry(
        "backends.ray_backend:RayClusterBackend",
        "Ray actors on an existing multi-node cluster, by address",
        remote=True,
        inference_modes=("worker", "central"),
        options_model=RayClusterOptions,
        needs="ray",
        schedules=("sync", "overlap"),
        cluster=True,
        conformance=(("worker", 2, 2), ("central", 2, 2)),
    ),
}

DEFAULT_BACKEND = "ray_local"


def available(name: str) -> bool:
    """Whether the backend's module and its dependency can be imported here."""
    entry = REGISTRY[name]
    module = entry.target.split(":")[0]
    return importlib.util.find_spec(module) is not None and (
        entry.needs is None or importlib.util.find_spec(entry.needs) is not None
    )


def create_backend(spec: BackendSpec) -> Backend:
    """Instantiate the backend named by `spec.name` (importing it only now)."""
    entry = REGISTRY[spec.name]
    module_name, class_name = entry.target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(spec)
