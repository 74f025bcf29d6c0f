"""Sampling backends, registered by the name a suite uses.

Imports are lazy: `ray` is imported only when a Ray backend is created.
A new backend is one module plus one line in `REGISTRY`.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from backends.base import Backend, BackendSpec


@dataclass(frozen=True)
class BackendEntry:
    """How to find a backend, and what a suite may set for it."""

    target: str
    """`module:Class`."""
    summary: str
    inference_modes: tuple[str, ...] = ("worker",)
    options: tuple[str, ...] = ()
    """Keys a suite may give in the case's `options` table."""
    multi_worker: bool = True
    needs: str | None = None
    """Module that must be importable for the backend to be available."""
    schedules: tuple[str, ...] = ("sync",)
    """`overlap` needs workers that sample while the learner trains: other processes, worker inference."""


REGISTRY: dict[str, BackendEntry] = {
    "serial": BackendEntry("backends.serial:SerialBackend", "one process, one policy call per env step", multi_worker=False),
    "vecenv": BackendEntry(
        "backends.vecenv:VecEnvBackend", "N envs in one process, batched policy inference", multi_worker=False
    ),
    "multiprocessing": BackendEntry(
        "backends.multiprocessing_backend:MultiprocessingBackend",
        "worker processes; weights through shared memory",
        ("worker", "central"),
        ("start_method", "timeout_s"),
        schedules=("sync", "overlap"),
    ),
    "ray_local": BackendEntry(
        "backends.ray_backend:RayLocalBackend",
        "Ray actors in an embedded Ray instance (ray.init)",
        ("worker", "central"),
        ("num_cpus", "timeout_s"),
        needs="ray",
        schedules=("sync", "overlap"),
    ),
    "ray_cluster": BackendEntry(
        "backends.ray_backend:RayClusterBackend",
        "Ray actors on an existing multi-node cluster, by address",
        ("worker", "central"),
        ("address", "timeout_s"),
        needs="ray",
        schedules=("sync", "overlap"),
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
