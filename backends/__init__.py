"""Sampling backends, registered by the name a suite uses.

Imports are lazy: `ray` is imported only when a Ray backend is created.
A new backend is one module plus one entry in `REGISTRY`; the entry says everything
the rest of the code needs to know about it (its options with their defaults, the
rules a configuration of it must keep), and the conformance tests
(tests/test_backends.py) run every entry.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import multiprocessing
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from annotated_types import Gt, Predicate

from backends.base import Backend, BackendSpec
from backends.envs import EnvSpec

# --- options: what a suite may set in a case's `options` table, per backend -------------------------
# Frozen dataclasses whose defaults are the backend's defaults, with `annotated_types` constraints:
# harness.suite validates a case's table against them with pydantic (types, ranges, choices), while
# workers that import this package never import pydantic (`BackendEntry.parse_options` checks the choices).

PositiveFinite = Annotated[float, Gt(0), Predicate(math.isfinite)]
ON_WORKER_FAILURE = ("fail", "restart")
"""What a remote backend does when a worker dies or hangs (its `options.on_worker_failure`): raise
`WorkerError`, or replace the worker and sample its share again (RLlib's `restart_failed_env_runners`)."""
CENTRAL_REFUSES_RESTART = (
    'on_worker_failure = "restart" needs inference = "worker": with central inference the learner holds every env\'s '
    "state between steps, so a lost worker would leave the fragment half-sampled"
)


@dataclass(frozen=True)
class NoOptions:
    """A backend that takes no options; the base of every options model, with the answers the harness may ask
    of any backend's options."""

    def restart_room_s(self, replacement_s: float) -> float:
        """How much longer than usual one iteration may take because lost workers are replaced, each replacement
        taking `replacement_s` to start and sample again: no time for a backend without workers to lose."""
        return 0.0


@dataclass(frozen=True)
class WaitOptions(NoOptions):
    """Options of every backend whose workers live in other processes."""

    timeout_s: PositiveFinite = 120.0
    """How long any wait on a worker may take before it counts as hung."""
    on_worker_failure: Literal[ON_WORKER_FAILURE] = "fail"
    """A worker that dies or hangs: `fail` the run, or `restart` it (a new worker with the same envs and
    seeds samples its share again; worker inference only)."""
    max_restarts: Annotated[int, Gt(0)] = 3
    """Under `restart`: restarts one run may make; the next lost worker fails it."""

    def restart_room_s(self, replacement_s: float) -> float:
        # Finding a hung worker takes its own timeout, then a replacement starts and samples again: room for every
        # restart the case allows, or the watchdog would end what the restart saves.
        return self.max_restarts * (self.timeout_s + replacement_s) if self.on_worker_failure == "restart" else 0.0


@dataclass(frozen=True)
class MultiprocessingOptions(WaitOptions):
    start_method: Literal[tuple(multiprocessing.get_all_start_methods())] = "forkserver"
    """How worker processes start: one of the methods this platform offers. forkserver: children fork from a
    clean server that imported the worker code once, so they start fast without inheriting the learner's
    threads (fork after OpenMP use can deadlock)."""
    batch_size: Annotated[int, Gt(0)] | None = None
    """Central inference: envs the learner acts on at once. All of them (default: lockstep, every env each step), or
    fewer (async, EnvPool's mode on our processes: whichever workers' envs are ready, so a slow env holds back no
    other); a whole number of workers' envs that divides the env count."""


@dataclass(frozen=True)
class RayLocalOptions(WaitOptions):
    num_cpus: Annotated[int, Gt(0)] | None = None
    """CPUs the embedded Ray instance may schedule (default: every core)."""


@dataclass(frozen=True)
class RayClusterOptions(WaitOptions):
    address: str | None = None
    """The cluster's address, `host:port` (default: RAY_ADDRESS, --address, or `harness cluster up`'s cluster)."""


@dataclass(frozen=True)
class EnvPoolOptions(NoOptions):
    num_threads: Annotated[int, Gt(0)] | None = None
    """EnvPool's C++ threads that step the envs (default: EnvPool's own choice)."""
    batch_size: Annotated[int, Gt(0)] | None = None
    """Envs the learner acts on at once: all of them (default: sync mode, every env in lockstep), or a divisor of
    the env count (async mode: whichever envs EnvPool has ready, so a slow env holds back no other)."""


@dataclass(frozen=True)
class GymAsyncOptions(NoOptions):
    shared_memory: bool = True
    """Observations come back through shared memory, as gymnasium's AsyncVectorEnv does by default; false: pickled
    through each env's pipe with the rest of its step."""
    context: Literal["forkserver", "spawn"] = "forkserver"
    """How the env processes start (gymnasium's `context`). Not fork: the learner holds torch's threads, and a fork
    after OpenMP use can deadlock."""


@dataclass(frozen=True)
class SB3SubprocOptions(NoOptions):
    start_method: Literal["forkserver", "spawn", "fork"] = "forkserver"
    """How SB3 starts the env processes (its `start_method`; forkserver is its own default). fork is SB3's, offered
    as it is, with its risk: a fork after the learner's OpenMP use can deadlock (SB3 issue #217)."""


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
    options_model: type[NoOptions] = NoOptions
    """The keys a case's `options` table may set, with their types, ranges and defaults."""
    multi_worker: bool = True
    batched_inference: bool = True
    """A policy copy is called once per step for all the envs it serves; False: once per env step (`serial`)."""
    needs: str | None = None
    """Module that must be importable for the backend to be available."""
    schedules: tuple[str, ...] = ("sync",)
    """`overlap` needs workers that sample while the learner trains: other processes, worker inference."""
    cluster: bool = False
    """Runs on an existing Ray cluster found by its `address`; its conformance tests need the `ray_cluster`
    fixture's cluster (marked `ray_cluster`)."""
    same_envs_as_gymnasium: bool = True
    """Steps gymnasium's envs, made by `backends.envs.make_env`: with the same seeds they sample what `vecenv`
    samples, take gymnasium kwargs and the synthetic step cost. False: the backend brings its own env
    implementations (EnvPool's C++ envs), so the conformance tests that need gymnasium's skip it."""
    env_check: str | None = None
    """`module:function` that raises ValueError, one line, for an env this backend cannot run (`check_env`)."""
    conformance: tuple[tuple[str, int, int], ...] = (("worker", 1, 4),)
    """What tests/test_backends.py runs it with: (inference mode, workers, envs per worker), 4 envs in
    all, every inference mode at least once."""

    @property
    def options(self) -> tuple[str, ...]:
        """Keys a suite may give in the case's `options` table."""
        return tuple(f.name for f in dataclasses.fields(self.options_model))

    def parse_options(self, options: Mapping[str, Any]) -> NoOptions:
        """A case's `options` table as `options_model`, with the defaults of the keys it leaves out. Unknown keys
        and values outside a `Literal`'s choices raise ValueError (a suite's validation has also checked the
        types and ranges, with pydantic)."""
        if unknown := sorted(set(options) - set(self.options)):
            valid = ", ".join(self.options) or "none"
            raise ValueError(f"unknown option '{unknown[0]}' for this backend; valid options: {valid}")
        hints = typing.get_type_hints(self.options_model)
        for key, value in options.items():
            choices = typing.get_args(hints[key]) if typing.get_origin(hints[key]) is Literal else ()
            if choices and value not in choices:
                raise ValueError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
        return self.options_model(**options)

    def check(self, spec: BackendSpec) -> None:
        """Raise ValueError for the first rule of this backend that `spec` breaks: its inference mode, schedule
        and worker count, and what its options ask of them. The suite checks every case of a `[[cases]]` table
        with it before anything runs, a remote backend again when it starts; the options' types and ranges
        are `options_model`'s."""
        name = spec.name
        if spec.inference not in self.inference_modes:
            raise ValueError(
                f"backend '{name}' has no inference mode '{spec.inference}'; choose {', '.join(self.inference_modes)}"
            )
        if spec.schedule not in self.schedules:
            able = ", ".join(other for other, e in REGISTRY.items() if spec.schedule in e.schedules)
            raise ValueError(f"backend '{name}' cannot overlap sampling with training (it samples in the learner's "
                             f"process); use one of {able}")  # fmt: skip
        if spec.schedule == "overlap" and spec.inference == "central":
            raise ValueError(
                "schedule 'overlap' needs inference = \"worker\": with central inference the learner does the sampling"
            )
        if not self.multi_worker and spec.workers != 1:
            raise ValueError(f"backend '{name}' is one vector env, stepped by the learner: set workers = 1 and sweep "
                             "'envs_per_worker' instead")  # fmt: skip
        batch_size = spec.options.get("batch_size")
        if isinstance(batch_size, int) and batch_size > 0:
            if spec.num_envs % batch_size:
                raise ValueError(f"options.batch_size {batch_size} does not divide the {spec.num_envs} envs; choose a "
                                 "divisor (or leave it out: all envs at once)")  # fmt: skip
            if spec.inference != "central":
                raise ValueError('options.batch_size needs inference = "central": the learner acts on the envs that are '
                                 "ready, so it must hold the policy")  # fmt: skip
            if self.remote and batch_size % spec.envs_per_worker:
                raise ValueError(f"options.batch_size {batch_size} is not a multiple of envs_per_worker "
                                 f"{spec.envs_per_worker}: a worker's envs step together")  # fmt: skip
        if not {"on_worker_failure", "max_restarts"} & spec.options.keys():
            return
        if not self.remote:
            able = ", ".join(other for other, e in REGISTRY.items() if e.remote)
            raise ValueError(f"backend '{name}' samples in the learner's process: it has no worker to restart or "
                             f"fail; on_worker_failure needs one of {able}")  # fmt: skip
        restart = spec.options.get("on_worker_failure") == "restart"
        if restart and spec.inference == "central":
            raise ValueError(CENTRAL_REFUSES_RESTART)
        if "max_restarts" in spec.options and not restart:
            raise ValueError('options.max_restarts applies only with on_worker_failure = "restart"; set that, or remove it')

    def check_env(self, env: EnvSpec) -> None:
        """Raise ValueError, one line, if this backend cannot run `env` (its `env_check`, imported only now). The
        suite calls it for every case, after the env itself is checked."""
        # Without its dependency the backend cannot run at all: that is said where it is created, not here.
        if self.env_check is not None and (self.needs is None or importlib.util.find_spec(self.needs) is not None):
            module_name, function = self.env_check.split(":")
            getattr(importlib.import_module(module_name), function)(env)


REGISTRY: dict[str, BackendEntry] = {
    "serial": BackendEntry(
        "backends.serial:SerialBackend", "one process, one policy call per env step", multi_worker=False, batched_inference=False
    ),
    "vecenv": BackendEntry(
        "backends.vecenv:VecEnvBackend", "N envs in one process, batched policy inference", multi_worker=False
    ),
    # Third-party samplers run as themselves (the tool's own vector env, its own processes and autoreset), with the
    # learner's policy batching every env's step: one vector env, so one worker and a sweep over its envs.
    "gym_async": BackendEntry(
        "backends.gym_async:GymAsyncBackend",
        "gymnasium's AsyncVectorEnv: one subprocess per env, batched inference in the learner",
        inference_modes=("central",),
        options_model=GymAsyncOptions,
        multi_worker=False,
        conformance=(("central", 1, 4),),
    ),
    "sb3_subproc": BackendEntry(
        "backends.sb3_subproc:SB3SubprocBackend",
        "Stable-Baselines3's SubprocVecEnv: one subprocess per env, batched inference in the learner",
        inference_modes=("central",),
        options_model=SB3SubprocOptions,
        multi_worker=False,
        needs="stable_baselines3",
        conformance=(("central", 1, 4),),
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
    "envpool": BackendEntry(
        "backends.envpool_backend:EnvPoolBackend",
        "EnvPool's C++ thread pool steps N envs; batched inference in the learner's process",
        inference_modes=("central",),
        options_model=EnvPoolOptions,
        multi_worker=False,
        needs="envpool",
        same_envs_as_gymnasium=False,
        env_check="backends.envpool_backend:check_env",
        conformance=(("central", 1, 4),),
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
