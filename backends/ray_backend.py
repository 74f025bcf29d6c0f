"""`ray_local` and `ray_cluster`: workers are Ray actors.

Worker inference: weights are `ray.put` once per iteration and every actor
fetches that one object; fragments come back as numpy arrays (no `ray.get`
per env step). Central inference: one actor call per step, the report's
`RayVecEnv`, kept because a user deciding how to parallelise needs its cost.

Bytes are what Ray's serializer makes of each object: the weights as put (once;
actors on the driver's node read them from its object store, every other node
hosting workers fetches them once over the network), and each reply as the
worker returns it, measured in the worker.

A replacement worker (`on_worker_failure = "restart"`) is a new actor with the
same placement (CPU share, node) as the one it replaces; the last `weights_kept`
weight objects are kept so that it can load the ones its requests need.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psutil
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import algorithms
import backends
from backends import processes, ray_connect
from backends.base import BackendSpec, PolicySpec
from backends.envs import EnvSpec
from backends.host import short_temp_root
from backends.remote import RemoteBackend
from backends.workers import CentralStepper, FragmentReply, RolloutWorker, StepReply, WorkerError, WorkerLost

Reply = TypeVar("Reply", FragmentReply, StepReply)


def serialized_size(value: Any) -> int:
    """Bytes Ray stores for `value` (serialized data plus metadata), as `ray.put` or a task return writes it.

    ray 2.60 (pinned): `put_object` stores `SerializationContext.serialize(value)`, and Ray sizes such an
    object as `total_bytes + len(metadata)` (ray/experimental/channel/shared_memory_channel.py); that is
    the `object_size` `ray.experimental.get_object_locations` reports.
    """
    serialized = ray._private.worker.global_worker.get_serialization_context().serialize(value)
    return serialized.total_bytes + len(serialized.metadata)


def with_own_size(reply: Reply, extra: int = 0) -> Reply:
    """`reply` with `message_bytes` = its own serialized size (that field included) + `extra`."""
    size = extra
    for _ in range(4):  # the size's own encoding grows at 256 and 65536: two or three rounds settle it
        reply = dataclasses.replace(reply, message_bytes=size)
        measured = serialized_size(reply) + extra
        if measured == size:
            break
        size = measured
    return reply


class RayRolloutWorker(RolloutWorker):
    """A `RolloutWorker` that measures what it returns: Ray serializes a reply only after the method returns."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_bytes: dict[tuple, int] = {}

    def sample(self, steps_per_env: int) -> FragmentReply:
        reply = with_own_size(super().sample(steps_per_env))
        # Transfer starts now: measuring the size (a float replaced below keeps it) is neither compute nor transfer.
        return dataclasses.replace(reply, ready=time.perf_counter())

    def step(self, actions: np.ndarray) -> StepReply:
        reply = super().step(actions)
        # Every step's request and reply hold arrays of the same shapes and dtypes, so they serialize to the same
        # size: measured on the first step of each shape rather than at every step, where it would add ~50 us
        # (three serializations) to a round trip of about a millisecond.
        key = (actions.shape, actions.dtype.str, reply.env_cost.steps)
        if key not in self.step_bytes:
            self.step_bytes[key] = with_own_size(reply, extra=serialized_size(actions)).message_bytes
        return dataclasses.replace(reply, message_bytes=self.step_bytes[key])


RemoteWorker = ray.remote(max_restarts=0)(RayRolloutWorker)


_auth_refreshed = False  # Ray's auth settings were changed after import: they no longer follow the environment


def apply_ray_environment(env: dict[str, str | None]) -> dict[str, str | None]:
    """Set (None: unset) Ray's auth variables for this process and its children; returns the old values.

    Ray 2.60 (pinned) reads RAY_AUTH_MODE when it is imported and caches the token when it first
    connects, and offers no public call to change either later (its own `_enable_token_auth` and the
    test helper `reset_auth_token_state` use these private ones). Only for a process that imported
    Ray under other settings: a fresh process with the variables already set needs none of this.
    """
    global _auth_refreshed
    from ray._raylet import AuthenticationTokenLoader, Config

    previous = ray_connect.apply(env)
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    _auth_refreshed = True
    return previous


def restore_environment(previous: dict[str, str | None]) -> None:
    ray_connect.restore(previous)


def stop_processes_using(path: str, grace_s: float = 3.0) -> int:
    """SIGTERM, then SIGKILL, every process whose command line names `path` (our own temp dir); how many."""
    own = processes.find(lambda p: any(path in part for part in p.cmdline()))
    processes.stop(own, grace_s)
    return len(own)


def kill_ray_worker(pid: int | None) -> None:
    """SIGKILL process `pid` on this host if it is still a Ray worker (its title starts with `ray::`), not a
    process that has since taken its number."""
    if pid is None:
        return
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        if " ".join(proc.cmdline()).startswith("ray::"):
            proc.kill()


class RayBackend(RemoteBackend):
    """Shared by both Ray backends; subclasses decide how to connect and where actors go."""

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        self.actors: list[Any] = []
        self.unconfirmed_loads: list[tuple[int, Any]] = []  # (worker, weight load sent with wait=False)
        self.weight_refs: dict[int, Any] = {}  # version -> its stored weights: the last `weights_kept` broadcast
        self.previous_env: dict[str, str | None] = {}  # Ray's auth variables before `_connect` set ours
        self.driver_node: str | None = None
        self.nodes: list[str] = []
        self.remote_nodes: list[str] = []
        """Nodes other than the driver's that host workers: each fetches a weight broadcast over the network."""

    def _connect(self) -> None:
        raise NotImplementedError

    def _placement(self, index: int) -> dict[str, Any]:
        """Actor options for worker `index` (CPU share, node)."""
        return {}

    def _launch(self, env: EnvSpec, policy: PolicySpec, seed: int) -> list[dict[str, Any]]:
        if ray.is_initialized():
            raise WorkerError("Ray is already initialised in this process; one Ray backend at a time")
        self._connect()
        self.launch_args = (env, seed, policy)
        self.actors = [self._start_actor(index) for index in range(self.spec.workers)]
        placement = self._get([a.info.remote() for a in self.actors], "start")
        self.driver_node = ray.get_runtime_context().get_node_id()
        self._note_nodes(placement)
        return placement

    def _start_actor(self, index: int) -> Any:
        env, seed, policy = self.launch_args
        return RemoteWorker.options(name=None, **self._placement(index)).remote(
            index, env, self.spec.worker_env_ids(index), seed, policy, self.spec.inference
        )

    def _note_nodes(self, placement: list[dict[str, Any]]) -> None:
        self.nodes = sorted({p.get("node", "") for p in placement})
        # Nodes whose object store fetches the weights over the network, once each.
        self.remote_nodes = sorted({p.get("node", "") for p in placement} - {self.driver_node})

    def _shares_learner_clock(self, worker: int) -> bool:
        # Another Ray node is treated as another host (its offset measured) even when it runs on this one.
        return self.placement[worker].get("node") == self.driver_node

    def _clock_probe(self, worker: int) -> float:
        return self._get([self.actors[worker].clock.remote()], "clock probe", [worker])[0]

    def _get(self, refs: list[Any], what: str, workers: list[int] | None = None) -> list[Any]:
        """`ray.get` with the backend's timeout; failures name the worker (`workers[i]` made `refs[i]`; default i)."""
        workers = list(range(len(refs))) if workers is None else workers
        try:
            return ray.get(refs, timeout=self.timeout_s)
        except GetTimeoutError:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            late = [w for w, r in zip(workers, refs, strict=True) if r not in ready]
            hint = " (actors pending: not enough CPUs in the cluster?)" if what == "start" else ""
            raise WorkerError(
                f"workers {late} did not finish '{what}' within {self.timeout_s:.0f} s{hint}; raise options.timeout_s"
            ) from None
        except RayError as exc:
            raise self._worker_error(refs, exc, what, workers) from None

    def _worker_error(self, refs: list[Any], exc: RayError, what: str, workers: list[int]) -> WorkerError:
        for index, ref in zip(workers, refs, strict=True):
            try:
                ray.get(ref, timeout=0)
            except RayTaskError as task_exc:
                return self._task_error(index, task_exc, what)
            except RayActorError as died:
                return WorkerLost(index, f"worker {index} died during '{what}': {str(died).splitlines()[0]}")
            except (RayError, GetTimeoutError):
                continue
        return WorkerError(f"a worker failed during '{what}': {str(exc).splitlines()[0]}")

    @staticmethod
    def _task_error(index: int, task_exc: RayTaskError, what: str) -> WorkerError:
        cause = str(task_exc.cause) if task_exc.cause is not None else str(task_exc).splitlines()[-1]
        return WorkerError(f"worker {index} failed during '{what}': {type(task_exc.cause).__name__}: {cause}\n{task_exc}")

    def _gather(self, refs: dict[int, Any], what: str) -> dict[int, Any]:
        """Each worker's result, or its loss (its actor died, or no result within the timeout); an exception
        raised in a worker raises `WorkerError`."""
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=self.timeout_s)
        out: dict[int, Any] = {}
        for worker, ref in refs.items():
            if ref not in ready:
                out[worker] = WorkerLost(worker, f"worker {worker} did not finish '{what}' within {self.timeout_s:.0f} s; "
                                                 "raise options.timeout_s")  # fmt: skip
                continue
            try:
                out[worker] = ray.get(ref, timeout=0)
            except RayTaskError as task_exc:
                raise self._task_error(worker, task_exc, what) from None
            except RayActorError as died:
                out[worker] = WorkerLost(worker, f"worker {worker} died during '{what}': {str(died).splitlines()[0]}")
        return out

    def _broadcast(self, weights: np.ndarray, version: int, wait: bool) -> tuple[int, int, list[WorkerLost]]:
        ref = ray.put(weights)  # once; every actor fetches the same object
        size = serialized_size(weights)
        self.weight_refs[version] = ref
        for old in list(self.weight_refs)[: -self.spec.weights_kept]:  # what no request in flight can need
            del self.weight_refs[old]
        # An actor runs one caller's calls in order: the load runs after the samples already asked for.
        loads = {i: a.load.remote(ref, version) for i, a in enumerate(self.actors)}
        lost: list[WorkerLost] = []
        if wait:
            lost = [r for r in self._gather(loads, "load weights").values() if isinstance(r, WorkerLost)]
        else:
            self.unconfirmed_loads += loads.items()
        return size, size * len(self.remote_nodes), lost

    def _load(self, worker: int, version: int) -> None:
        self.unconfirmed_loads.append((worker, self.actors[worker].load.remote(self.weight_refs[version], version)))

    def _dispatch_to(self, worker: int, steps_per_env: int) -> Any:
        return self.actors[worker].sample.remote(steps_per_env)

    def _receive(self, handles: dict[int, Any]) -> dict[int, tuple[FragmentReply, int] | WorkerLost]:
        replies = self._gather(handles, "sample")
        # Loads sent without waiting: raise the errors of those that ran, keep the others for later. A dead
        # actor's load is not an error of its own: its loss shows in its sample, and its replacement's loads replace it.
        loads = [ref for _, ref in self.unconfirmed_loads]
        done = set(ray.wait(loads, num_returns=len(loads), timeout=0)[0]) if loads else set()
        for worker, ref in self.unconfirmed_loads:
            if ref in done:
                try:
                    ray.get(ref, timeout=0)
                except RayTaskError as task_exc:
                    raise self._task_error(worker, task_exc, "load weights") from None
                except RayActorError:
                    pass
        self.unconfirmed_loads = [(w, ref) for w, ref in self.unconfirmed_loads if ref not in done]
        return {i: r if isinstance(r, WorkerLost) else (r, r.message_bytes) for i, r in replies.items()}

    def _replace(self, worker: int) -> dict[str, Any]:
        with contextlib.suppress(RayError):
            ray.kill(self.actors[worker])  # dead already, or hung: it must not sample on beside its replacement
        if self.placement[worker].get("node") == self.driver_node:
            # A hung actor holds its CPU share until Ray gives up on a graceful exit (~5 s, measured): on this
            # host, end it now, so that its replacement can be scheduled in its place.
            kill_ray_worker(self.placement[worker].get("pid"))
        self.unconfirmed_loads = [(w, ref) for w, ref in self.unconfirmed_loads if w != worker]
        self.actors[worker] = self._start_actor(worker)
        (info,) = self._get([self.actors[worker].info.remote()], "start", [worker])
        self._note_nodes([*self.placement[:worker], info, *self.placement[worker + 1 :]])
        return info

    def _central_stepper(self, obs_dim: int) -> CentralStepper:
        return _RayStepper(self, obs_dim)

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(RayError):
                ray.kill(actor)
        self.actors = []
        if ray.is_initialized():
            ray.shutdown()
        restore_environment(self.previous_env)
        self.previous_env = {}
        self._cleanup()

    def _cleanup(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "transport": "weights: ray.put once, fetched by every actor; fragments: actor return values"
            if self.spec.inference == "worker"
            else "one actor call per env step (RayVecEnv style)",
            "placement": self.placement,
            "nodes": self.nodes,
            "driver_node": self.driver_node,
            "remote_worker_nodes": len(self.remote_nodes),
        }


class RayLocalBackend(RayBackend):
    """Ray embedded in the learner's process (`ray.init`), on this machine's cores."""

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        self.num_cpus = float(self.options.num_cpus or os.cpu_count() or 1)
        self.temp_dir: str | None = None
        """Ray's private temp dir (its sessions, sockets, our token): made by `_connect`, removed on close."""

    def _connect(self) -> None:
        cpus = int(self.num_cpus)
        # A short private temp dir (unix socket paths max 107 bytes), removed on close;
        # token auth with a per-run token so nothing else on the machine can join.
        self.temp_dir = tempfile.mkdtemp(prefix="rl", dir=short_temp_root())
        token_path = Path(self.temp_dir) / "token"
        token_path.write_text(secrets.token_hex(32))
        token_path.chmod(0o600)
        auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path), "RAY_USAGE_STATS_ENABLED": "0"}
        self.previous_env = apply_ray_environment(auth | {"RAY_AUTH_TOKEN": ""})
        os.environ.pop("RAY_AUTH_TOKEN")  # it would override the token path
        # address="local": never join some other cluster already running on this machine.
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 logging_level="warning", _temp_dir=self.temp_dir)  # fmt: skip

    def _placement(self, index: int) -> dict[str, Any]:
        # More workers than CPUs must still start: ask for a fraction of a CPU each.
        return {"num_cpus": min(1.0, self.num_cpus / self.spec.workers)}

    def _cleanup(self) -> None:
        if self.temp_dir:
            # ray.shutdown() stops what it started; this catches a failed start's leftovers.
            stop_processes_using(self.temp_dir)
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None


class RayClusterBackend(RayBackend):
    """Ray actors on an existing multi-node cluster, one node after another."""

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        self.address: str | None = None
        self.node_ids: list[str] = []
        """The cluster's alive nodes when it was joined: workers go round-robin over them."""
        self.credentials: str | None = None
        """Where the credentials came from, in words (no secret)."""

    def _connect(self) -> None:
        try:
            connection = ray_connect.resolve({"address": self.options.address})
            ray_connect.probe(connection.address, timeout_s=10)
        except ray_connect.ConnectError as exc:
            raise WorkerError(str(exc)) from None
        # The public path: the variables were in the environment before `import ray` (`harness run` exports
        # them) and Ray reads them itself. Otherwise this process imported Ray, or ran it, under other settings.
        refresh = bool(connection.missing_from(os.environ)) or _auth_refreshed
        self.previous_env = apply_ray_environment(connection.env) if refresh else {}
        when = "set after Ray was imported" if refresh else "already in the environment"
        self.credentials = f"{connection.token_source}, {when}"
        address = connection.address
        # The code travels to the nodes through the runtime env, not a shared file system.
        runtime_env = {"py_modules": [os.path.dirname(algorithms.__file__), os.path.dirname(backends.__file__)]}
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, logging_level="warning")
        self.address = address
        alive = [n for n in ray.nodes() if n.get("Alive")]
        self.node_ids = [n["NodeID"] for n in alive]
        total = sum(n.get("Resources", {}).get("CPU", 0) for n in alive)
        self.cpus_per_worker = min(1.0, total / self.spec.workers) if total else 1.0

    def _placement(self, index: int) -> dict[str, Any]:
        # Ray's SPREAD put every actor on one node here (RAY_NOTES.md): pin round-robin instead.
        node = self.node_ids[index % len(self.node_ids)]
        per_node_workers = -(-self.spec.workers // len(self.node_ids))
        node_cpus = next(n["Resources"].get("CPU", 1) for n in ray.nodes() if n["NodeID"] == node)
        return {
            "num_cpus": min(1.0, node_cpus / per_node_workers),
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=False),
        }

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "address": self.address,
            "cluster_nodes": len(self.node_ids),
            "credentials": self.credentials,
        }


class _RayStepper(CentralStepper):
    def __init__(self, backend: RayBackend, obs_dim: int) -> None:
        super().__init__(backend.spec, obs_dim)
        self.backend = backend

    def _reset_all(self) -> list[np.ndarray]:
        return self.backend._get([a.reset.remote() for a in self.backend.actors], "reset")

    def _step_all(self, actions: list[np.ndarray]) -> list[tuple[StepReply, int]]:
        replies = self.backend._get([a.step.remote(part) for a, part in zip(self.backend.actors, actions, strict=True)], "step")
        return [(reply, reply.message_bytes) for reply in replies]
