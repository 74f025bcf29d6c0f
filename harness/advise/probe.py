"""One part of `harness advise`'s profile, measured in the fresh process that runs this module.

`python -m harness.advise.probe REQUEST.json RESULT.json`: the request names the part and its settings,
the result is what it measured, raw (the profile, `harness/advise/profile.py`, turns it into model
parameters). Each part runs in its own process, as a case run does, so that one part's threads, caches
and children never touch another's timings. Every figure is a median of repeated calls timed here with
`time.perf_counter`; nothing is estimated.

Parts:
- `local`: the env under a random policy (each step's wall and CPU time, resets, episode lengths, sizes),
  numpy inference against batch size, the in-process sampling loops (`serial`, `vecenv`) at two env counts,
  and the learner's update for the preset on a batch of the preset's size.
- `remote`: a worker backend (`multiprocessing`, `ray_local`) at a few worker counts: start-up, memory per
  worker, weight broadcast (time, bytes) with and without waiting, a request of one step per worker (the fixed
  cost of a round), the CPU an env step costs outside the learner's process (workers and the framework's own
  processes, read from the kernel's per-thread accounting), and one worker's long fragment (its per-step cost
  and what crossed per step).
- `central`: a backend whose envs live in other processes while the learner acts for them (`gym_async`,
  `sb3_subproc`, or a worker backend with central inference), at one and two processes: the time per step
  beyond the env's own, and the CPU a step costs in the env processes.
- `envpool`: EnvPool's per-step time at two env counts, for an env it implements.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPEATS = 7
"""Calls per timed figure; the median is kept."""


def _median_time(call: Any, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _env_spec(request: dict[str, Any]) -> Any:
    from backends.envs import EnvSpec

    return EnvSpec(**request["env"])


def _policy_spec(request: dict[str, Any]) -> Any:
    from algorithms.policy import PolicySpec
    from backends.envs import describe_env

    spaces = describe_env(_env_spec(request))
    return PolicySpec(spaces.obs_dim, spaces.act_dim, tuple(request["hidden_sizes"]), spaces.distribution, request["activation"])


def descendants_cpu_s() -> float:
    """CPU seconds used so far by every process this one started, and theirs (workers, env processes, Ray's own
    daemons): from each thread's scheduler statistics (nanoseconds) where Linux has them, else psutil's CPU times
    (10 ms ticks). What sampling costs the machine's cores, beyond the learner's process."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            tasks = Path(f"/proc/{child.pid}/task")
            if tasks.is_dir():
                total += sum(int((t / "schedstat").read_text().split()[0]) for t in tasks.iterdir()) / 1e9
            else:
                times = child.cpu_times()
                total += times.user + times.system
        except (OSError, ValueError, IndexError, psutil.Error):
            continue  # it ended meanwhile: its CPU is not sampling's to count
    return total


def _cpu_per_step(backend: Any, steps: int) -> float:
    """CPU seconds per env step that a request costs outside the learner's process."""
    before = descendants_cpu_s()
    backend.collect(steps)
    return (descendants_cpu_s() - before) / steps


def _limit_threads() -> None:
    """One BLAS thread, as every sampler and the default learner run (`[measure] torch_threads = 1`)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


# --- local -------------------------------------------------------------------------------------------


def probe_local(request: dict[str, Any]) -> dict[str, Any]:
    _limit_threads()
    spec, policy = _env_spec(request), _policy_spec(request)
    result = {"env": _env_steps(spec, policy, request["env_seconds"], request["env_max_steps"])}
    result["inference"] = _inference(policy, request["batch_sizes"])
    result["loops"] = _loops(spec, policy, request["loop_envs"], request["loop_steps_per_env"])
    result["learner"] = _learner(request, policy)
    return result


def _env_steps(spec: Any, policy: Any, seconds: float, max_steps: int) -> dict[str, Any]:
    """Each step's wall and CPU time under random actions, and each reset's, for up to `seconds`."""
    from backends.envs import make_env

    env = make_env(spec, 0, 0)
    try:
        started = time.perf_counter()
        reset_wall, step_wall, step_cpu, lengths = [], [], [], []
        obs, length = None, 0
        env.action_space.seed(0)
        while len(step_wall) < max_steps and (time.perf_counter() - started < seconds or len(step_wall) < 100):
            if obs is None:
                t0 = time.perf_counter()
                obs, _ = env.reset(seed=len(reset_wall))
                reset_wall.append(time.perf_counter() - t0)
                length = 0
            action = env.action_space.sample()
            c0, t0 = time.thread_time(), time.perf_counter()
            obs, _, terminated, truncated, _ = env.step(action)
            step_wall.append(time.perf_counter() - t0)
            step_cpu.append(time.thread_time() - c0)
            length += 1
            if terminated or truncated:
                lengths.append(length)
                obs = None
        obs_array = np.asarray(obs if obs is not None else env.observation_space.sample(), np.float32)
    finally:
        env.close()
    return {
        "step_wall_s": step_wall,
        "step_cpu_s": step_cpu,
        "reset_wall_s": reset_wall,
        "episode_lengths": lengths,
        "obs_dim": policy.obs_dim,
        "act_dim": policy.act_dim,
        "obs_bytes": int(obs_array.nbytes),
    }


def _inference(policy: Any, batch_sizes: list[int]) -> dict[str, float]:
    """Seconds per `InferencePolicy.act` call at each batch size (the call every sampler makes)."""
    from algorithms.inference import InferencePolicy

    net = InferencePolicy(policy)
    rng = np.random.default_rng(0)
    net.load_flat(rng.normal(0, 0.1, net.num_params).astype(np.float32), 0)
    out = {}
    for batch in batch_sizes:
        obs = rng.normal(size=(batch, policy.obs_dim)).astype(np.float32)
        noise = np.stack([policy.action.draw_noise(rng) for _ in range(batch)])
        net.act(obs, noise)  # warm
        calls = max(5, min(200, int(2000 / batch)))
        out[str(batch)] = _median_time(lambda o=obs, n=noise, k=calls: [net.act(o, n) for _ in range(k)]) / calls
    return out


def _loops(spec: Any, policy: Any, env_counts: list[int], steps_per_env: int) -> dict[str, Any]:
    """The in-process sampling loops at a few env counts: where a vector step's time went (`SamplingSplit`)."""
    from backends import create_backend
    from backends.base import BackendSpec

    out: dict[str, Any] = {}
    for name in ("serial", "vecenv"):
        for envs in env_counts if name == "vecenv" else [1]:
            backend = create_backend(BackendSpec(name, 1, envs, "worker"))
            backend.start(spec, policy, 0)
            try:
                backend.set_weights(np.random.default_rng(0).normal(0, 0.1, policy.num_params).astype(np.float32), 0)
                backend.collect(envs * 16)  # warm
                splits = []
                for _ in range(3):
                    got = backend.collect(envs * steps_per_env)
                    splits.append([got.sample_env_s, got.sample_inference_s, got.sample_other_s])
            finally:
                backend.close()
            env_s, inference_s, other_s = np.median(np.array(splits), axis=0) / steps_per_env
            out[f"{name}:{envs}"] = {"envs": envs, "env_s": env_s, "inference_s": inference_s, "other_s": other_s}
    return out


def _learner(request: dict[str, Any], policy: Any) -> dict[str, Any]:
    """The learner's `train` on a batch of the preset's size: a rollout the policy itself sampled on random
    observations (the update's cost does not depend on what the observations mean), episodes cut every 200 steps."""
    import torch

    from algorithms.base import LearnerSetup
    from algorithms.config import SETTINGS_TABLES
    from algorithms.inference import InferencePolicy
    from algorithms.registry import create_learner, settings_table_name
    from algorithms.rollout import Rollout

    torch.set_num_threads(request["torch_threads"])
    config = SETTINGS_TABLES[settings_table_name(request["algorithm"])].build(request["ppo"])  # the learner's settings
    steps, envs = config.steps_per_iteration, 1
    learner = create_learner(request["algorithm"], LearnerSetup(config, policy, 0, steps * 10))
    net = InferencePolicy(policy)
    rng = np.random.default_rng(1)

    def batch() -> Rollout:
        net.load_flat(learner.weights(), learner.version)
        obs = rng.normal(size=(steps, envs, policy.obs_dim)).astype(np.float32)
        noise = np.stack([policy.action.draw_noise(rng) for _ in range(steps)])
        actions, log_probs, values = net.act(obs[:, 0], noise)
        ends = (np.arange(steps) % 200 == 199).reshape(steps, envs)
        return Rollout(obs=obs, actions=actions.reshape(steps, envs, -1), log_probs=log_probs.reshape(steps, envs),
                       values=values.reshape(steps, envs), rewards=rng.normal(size=(steps, envs)).astype(np.float32),
                       terminations=np.zeros((steps, envs), bool), truncations=ends,
                       final_values=np.where(ends, values.reshape(steps, envs), 0).astype(np.float32),
                       last_values=np.zeros(envs, np.float32), env_ids=np.arange(envs), episode_returns=np.zeros(0),
                       episode_lengths=np.zeros(0, np.int64), episode_env_ids=np.zeros(0, np.int64),
                       policy_version=learner.version)  # fmt: skip

    learner.train(batch())  # warm
    times = []
    for _ in range(3):
        rollout = batch()
        started = time.perf_counter()
        learner.train(rollout)
        times.append(time.perf_counter() - started)
    return {"train_s": statistics.median(times), "weights_bytes": int(learner.weights().nbytes), "steps": steps}


# --- remote workers ----------------------------------------------------------------------------------


def probe_remote(request: dict[str, Any]) -> dict[str, Any]:
    from backends import create_backend
    from backends.base import BackendSpec

    _limit_threads()
    spec, policy = _env_spec(request), _policy_spec(request)
    weights = np.random.default_rng(0).normal(0, 0.1, policy.num_params).astype(np.float32)
    by_workers: dict[str, Any] = {}
    fragment: dict[str, Any] = {}
    for workers in request["worker_counts"]:
        backend = create_backend(BackendSpec(request["backend"], workers, 1, "worker", dict(request.get("options", {}))))
        started = time.perf_counter()
        backend.start(spec, policy, 0)
        try:
            by_workers[str(workers)] = {"startup_s": time.perf_counter() - started, **_worker_costs(backend, weights, request)}
            if workers == 1:
                fragment = _long_fragment(backend, request["fragment_steps"])
        finally:
            backend.close()
    return {"by_workers": by_workers, "fragment": fragment}


def _worker_costs(backend: Any, weights: np.ndarray, request: dict[str, Any]) -> dict[str, Any]:
    """A started worker backend's broadcast (waiting and not), a round's fixed cost, memory and CPU per step."""
    workers = backend.spec.workers
    version = iter(range(1, 10_000))
    report = backend.set_weights(weights, 0)
    backend.collect(workers)  # warm: every worker has sampled once
    sync_s = _median_time(lambda: backend.set_weights(weights, next(version)))
    nowait_s = statistics.median(_nowait_broadcast(backend, weights, version) for _ in range(REPEATS))
    backend.set_weights(weights, next(version))
    return {
        "sync_s": sync_s,
        "sync_nowait_s": nowait_s,
        "round_s": _median_time(lambda: backend.collect(workers)),
        "sync_bytes": report.bytes_sent or 0,
        "worker_pss_mib": _worker_memory_mib(backend),
        "cpu_per_step_s": statistics.median(_cpu_per_step(backend, workers * request["cpu_steps"]) for _ in range(3)),
    }


def _nowait_broadcast(backend: Any, weights: np.ndarray, versions: Any) -> float:
    """Seconds to hand weights over without waiting (overlap's broadcast), then a round that loads them: a
    backend keeps only as many versions in flight as its pipeline allows."""
    started = time.perf_counter()
    backend.set_weights(weights, next(versions), wait=False)
    elapsed = time.perf_counter() - started
    backend.collect(backend.spec.workers)
    return elapsed


def _long_fragment(backend: Any, steps: int) -> dict[str, Any]:
    """One worker, one env, `steps` steps: the worker's own time per step (env, policy, loop) and what the
    request cost beyond it, per step, once the fixed cost of a round is known."""
    rows = []
    for _ in range(3):
        started = time.perf_counter()
        got = backend.collect(steps)
        wall = time.perf_counter() - started
        share = got.workers[0]
        rows.append([wall, share.compute_s, share.env_s or 0.0, share.inference_s or 0.0, got.transfer_bytes or 0])
    wall, compute, env_s, inference_s, transfer_bytes = np.median(np.array(rows), axis=0)
    return {"steps": steps, "wall_s": wall, "compute_s": compute, "env_s": env_s, "inference_s": inference_s,
            "transfer_bytes": transfer_bytes}  # fmt: skip


def _worker_memory_mib(backend: Any) -> float | None:
    """Median proportional set size of the worker processes the backend placed (PSS: shared pages split)."""
    import psutil

    return _median_pss_mib(psutil.Process(p["pid"]) for p in backend.describe().get("placement", []) if p.get("pid"))


def _median_pss_mib(processes: Any) -> float | None:
    """Median PSS of `processes` (RSS where the kernel gives no PSS); those that ended meanwhile are left out."""
    import psutil

    sizes = []
    for process in processes:
        try:
            info = process.memory_full_info()
            sizes.append(getattr(info, "pss", info.rss) / 2**20)
        except (psutil.Error, OSError):
            continue
    return statistics.median(sizes) if sizes else None


# --- central inference -------------------------------------------------------------------------------


def probe_central(request: dict[str, Any]) -> dict[str, Any]:
    """Per vector step, the sampler's time waiting on its envs and on the rest of its loop, at each process count.
    One env per process: the count is the tool's processes (`gym_async`, `sb3_subproc`: one per env)."""
    from backends import REGISTRY, create_backend
    from backends.base import BackendSpec

    _limit_threads()
    spec, policy = _env_spec(request), _policy_spec(request)
    weights = np.random.default_rng(0).normal(0, 0.1, policy.num_params).astype(np.float32)
    name, out = request["backend"], {}
    steps = request["steps_per_env"]
    for procs in request["process_counts"]:
        layout = (procs, 1) if REGISTRY[name].multi_worker else (1, procs)
        backend = create_backend(BackendSpec(name, *layout, "central", dict(request.get("options", {}))))
        started = time.perf_counter()
        backend.start(spec, policy, 0)
        try:
            startup_s = time.perf_counter() - started
            backend.set_weights(weights, 0)
            backend.collect(procs * 8)  # warm
            rows = []
            for _ in range(3):
                before = descendants_cpu_s()
                got = backend.collect(procs * steps)
                cpu = (descendants_cpu_s() - before) / (procs * steps)
                rows.append([got.sample_env_s or 0.0, got.sample_inference_s or 0.0, got.sample_other_s or 0.0, cpu])
            memory = _worker_memory_mib(backend) if REGISTRY[name].multi_worker else _children_memory_mib()
        finally:
            backend.close()
        env_s, inference_s, other_s = np.median(np.array(rows)[:, :3], axis=0) / steps
        out[str(procs)] = {"env_s": env_s, "inference_s": inference_s, "other_s": other_s, "startup_s": startup_s,
                           "process_pss_mib": memory, "cpu_per_step_s": float(np.median(np.array(rows)[:, 3]))}  # fmt: skip
    return {"by_processes": out}


def _children_memory_mib() -> float | None:
    """Median PSS of this process's children (the env processes a vector env started)."""
    import psutil

    return _median_pss_mib(psutil.Process().children(recursive=True))


# --- EnvPool -----------------------------------------------------------------------------------------


def probe_envpool(request: dict[str, Any]) -> dict[str, Any]:
    from backends import create_backend
    from backends.base import BackendSpec

    _limit_threads()
    spec, policy = _env_spec(request), _policy_spec(request)
    weights = np.random.default_rng(0).normal(0, 0.1, policy.num_params).astype(np.float32)
    out = {}
    steps = request["steps_per_env"]
    for envs in request["env_counts"]:
        backend = create_backend(BackendSpec("envpool", 1, envs, "central"))
        backend.start(spec, policy, 0)
        try:
            backend.set_weights(weights, 0)
            backend.collect(envs * 8)
            rows = []
            for _ in range(3):
                got = backend.collect(envs * steps)
                rows.append([got.sample_env_s or 0.0, got.sample_inference_s or 0.0, got.sample_other_s or 0.0])
        finally:
            backend.close()
        env_s, inference_s, other_s = np.median(np.array(rows), axis=0) / steps
        out[str(envs)] = {"env_s": env_s, "inference_s": inference_s, "other_s": other_s}
    return {"by_envs": out}


PARTS = {"local": probe_local, "remote": probe_remote, "central": probe_central, "envpool": probe_envpool}


def main(argv: list[str]) -> int:
    request_path, result_path = Path(argv[0]), Path(argv[1])
    request = json.loads(request_path.read_text())
    result = PARTS[request["part"]](request)
    result_path.write_text(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
