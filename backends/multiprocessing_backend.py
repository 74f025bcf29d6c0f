"""`multiprocessing`: real worker processes; weights and per-step data through shared memory.

Worker inference: the learner writes the flat weights once into a shared-memory
buffer (plus a version counter) and tells each worker over its pipe to load
them; fragments come back pickled through the pipes. The buffer has
`BackendSpec.weights_kept` slots (`max_lag + 1`, or `max_lag x publications_per_batch + 1`
when the learner publishes during its update), version v in slot v % slots: under `overlap`
the learner writes new weights while workers still sample, and a worker may be asked to
load any version a request in flight was submitted with, never a slot being written. Central inference:
actions go out and observations come back through per-worker shared-memory
arrays; the pipes carry only tiny control messages. With `options.batch_size` below
the env count, central inference is async: the learner acts on whichever workers
are ready (`backends.async_central`), EnvPool's async mode on our own processes.

Every message is pickled here (protocol 5) and sent with `send_bytes`, so the
bytes that cross a pipe are counted exactly; shared memory counts the regions
written. A weight broadcast is the slot written once plus the control messages.

A replacement worker (`on_worker_failure = "restart"`) is a new process on a new
pipe that attaches to the same weight buffer by name; the learner created every
segment and alone unlinks them, so a killed worker leaks none.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import pickle
import time
import traceback
from multiprocessing.connection import Connection, wait
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from backends import processes
from backends.async_central import AsyncCentralSampler
from backends.base import BackendSpec, PolicySpec
from backends.envs import EnvCost, EnvSpec
from backends.processes import new_shm_name
from backends.remote import RemoteBackend
from backends.sampling import FragmentSampler, NoiseSource, StepResult
from backends.workers import CentralStepper, FragmentReply, RolloutWorker, StepReply, WorkerError, WorkerLost

CLOSE_GRACE_S = 5.0
"""How long workers told to close may take to exit before they are killed."""
# What a worker writes into its shared memory after a central-inference step.
STEP_OUTPUTS = (*StepResult.__dataclass_fields__, "step_s", "env_cost_s", "env_cost_steps")


def send_message(conn: Connection, message: tuple) -> int:
    """Pickle `message` and send it; returns its size in bytes (the 4-byte length header not counted)."""
    payload = pickle.dumps(message, protocol=5)
    conn.send_bytes(payload)
    return len(payload)


def receive_message(conn: Connection) -> tuple[tuple, int]:
    """The next message on `conn` and its size in bytes."""
    payload = conn.recv_bytes()
    return pickle.loads(payload), len(payload)


class SharedArrays:
    """Named numpy arrays laid out in one shared-memory block."""

    def __init__(self, layout: dict[str, tuple[tuple[int, ...], str]], name: str | None = None) -> None:
        offsets, size = {}, 0
        for key, (shape, dtype) in layout.items():
            size = -(-size // 8) * 8  # 8-byte alignment
            offsets[key] = size
            size += int(np.prod(shape)) * np.dtype(dtype).itemsize
        self.layout = layout
        # Created under the tree's prefix (backends.host), so the runner's sweep finds what a killed case left.
        self.shm = SharedMemory(name=name or new_shm_name(), create=name is None, size=max(size, 8))
        self.arrays = {
            k: np.ndarray(shape, dtype, buffer=self.shm.buf, offset=offsets[k]) for k, (shape, dtype) in layout.items()
        }

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def close(self, unlink: bool = False) -> None:
        self.arrays = {}
        self.shm.close()
        if unlink:
            self.shm.unlink()


def step_layout(num_envs: int, policy: PolicySpec) -> dict[str, tuple[tuple[int, ...], str]]:
    """One central-inference worker's shared arrays: the actions in, the step's results out."""
    obs_dim, action = policy.obs_dim, policy.action
    return {
        "actions": ((num_envs, *action.action_shape), action.action_dtype.name),
        "obs": ((num_envs, obs_dim), "float32"),
        "rewards": ((num_envs,), "float32"),
        "terminations": ((num_envs,), "bool"),
        "truncations": ((num_envs,), "bool"),
        "final_obs": ((num_envs, obs_dim), "float32"),
        "step_s": ((1,), "float64"),
        "env_cost_s": ((1,), "float64"),
        "env_cost_steps": ((1,), "int64"),
    }


def worker_main(conn: Connection, index: int, env: EnvSpec, env_ids: np.ndarray, seed: int, policy: PolicySpec,
                inference: str, shm_name: str, shm_layout: dict) -> None:  # fmt: skip
    """A worker process: serve load / sample / reset / step requests until told to close."""
    shared = worker = None
    try:
        worker = RolloutWorker(index, env, env_ids, seed, policy, inference)
        shared = SharedArrays(shm_layout, name=shm_name)
        send_message(conn, ("ready", worker.info()))
        while True:
            try:
                request, _ = receive_message(conn)
            except EOFError:  # the learner is gone
                break
            kind = request[0]
            if kind == "close":
                break
            if kind == "load":
                _, version, reply = request
                slot = version % len(shared["version"])
                if int(shared["version"][slot]) != version:
                    raise RuntimeError(
                        f"weight slot {slot} holds version {int(shared['version'][slot])}, asked to load {version}"
                    )
                worker.load(shared["weights"][slot], version)
                if reply:
                    send_message(conn, ("loaded", version))
            elif kind == "sample":
                send_message(conn, ("fragment", worker.sample(request[1])))
            elif kind == "reset":
                shared["obs"][:] = worker.reset()
                send_message(conn, ("ok",))
            elif kind == "step":
                step = worker.step(shared["actions"].copy())
                for field in StepResult.__dataclass_fields__:
                    shared[field][:] = getattr(step.result, field)
                shared["step_s"][0] = step.seconds
                shared["env_cost_s"][0] = step.env_cost.seconds
                shared["env_cost_steps"][0] = step.env_cost.steps
                send_message(conn, ("ok",))
            elif kind == "clock":
                send_message(conn, ("clock", worker.clock()))
            else:
                raise ValueError(f"unknown request {kind!r}")
    except BaseException:  # everything goes back to the learner, with the traceback
        with contextlib.suppress(OSError, ValueError):
            send_message(conn, ("error", traceback.format_exc()))
    finally:
        if worker is not None:
            worker.close()
        if shared is not None:
            shared.close()


class MultiprocessingBackend(RemoteBackend):
    """N worker processes with k envs each."""

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        self.start_method: str | None = None
        """The start method in use: None until `start`."""
        self.procs: list[Any] = []  # multiprocessing.Process; None until its worker starts
        self.conns: list[Any] = []  # Connection; None until its worker starts
        self.shared: list[SharedArrays] = []
        """Every segment, created (and unlinked, on close) by the learner alone."""
        self.batch_size = self.options.batch_size or spec.num_envs
        """Envs central inference acts on at once: all of them (lockstep) or fewer (async, whichever are ready)."""

    def _launch(self, env: EnvSpec, policy: PolicySpec, seed: int) -> list[dict[str, Any]]:
        method = self.start_method = self.options.start_method
        self.ctx = mp.get_context(method)
        if method == "forkserver":
            self.ctx.set_forkserver_preload(["backends.workers"])
        self.launch_args = (env, seed, policy)
        num_params = policy.num_params
        k = self.spec.envs_per_worker
        if self.spec.inference == "worker":
            # One buffer for all workers: the learner writes once, each worker copies.
            slots = self.spec.weights_kept
            self.weights = SharedArrays({"weights": ((slots, num_params), "float32"), "version": ((slots,), "int64")})
            self.weights["version"][:] = -1
            self.shared.append(self.weights)
        for index in range(self.spec.workers):
            if self.spec.inference == "central":
                self.shared.append(SharedArrays(step_layout(k, policy)))
            self.procs.append(None)
            self.conns.append(None)
            self._start_worker(index)
        return [msg[1] for msg, _ in self._receive_all("ready")]

    def _start_worker(self, index: int) -> None:
        """Start worker `index` as a new process on a new pipe, attached to its shared memory (not waited for)."""
        env, seed, policy = self.launch_args
        shared = self.weights if self.spec.inference == "worker" else self.shared[index]
        parent, child = self.ctx.Pipe()
        args = (child, index, env, self.spec.worker_env_ids(index), seed, policy, self.spec.inference,
                shared.shm.name, shared.layout)  # fmt: skip
        proc = self.ctx.Process(target=worker_main, args=args, name=f"ppo-worker-{index}", daemon=True)
        proc.start()
        child.close()
        self.procs[index] = proc
        self.conns[index] = parent

    def _receive_all(self, expected: str) -> list[tuple[tuple, int]]:
        """One reply from every worker and its size in bytes, in worker order; a lost worker raises (`WorkerLost`)."""
        replies = self._gather(expected, range(len(self.conns)))
        out = []
        for i in range(len(self.conns)):
            if isinstance(reply := replies[i], WorkerLost):
                raise reply
            out.append(reply)
        return out

    def _gather(self, expected: str, workers: Any, first: bool = False,
                deadline: float | None = None) -> dict[int, tuple[tuple, int] | WorkerLost]:  # fmt: skip
        """One reply from each of `workers` and its size in bytes, or its loss: it died, or sent nothing by the
        deadline (`time.monotonic()`; default: the timeout from now). A worker that reports an exception raises
        `WorkerError` at once. `first`: return as soon as any of them has replied or is lost (async central
        inference waits for whichever workers are ready; its deadline is the oldest request's)."""
        replies: dict[int, tuple[tuple, int] | WorkerLost] = {}
        deadline = time.monotonic() + self.timeout_s if deadline is None else deadline
        while pending := [i for i in workers if i not in replies]:
            handles = {self.conns[i]: i for i in pending} | {self.procs[i].sentinel: i for i in pending}
            ready = wait(list(handles), timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                for i in pending:
                    replies[i] = WorkerLost(i, f"worker {i} (pid {self.procs[i].pid}) sent no '{expected}' within "
                                               f"{self.timeout_s:.0f} s; raise options.timeout_s if envs are slow")  # fmt: skip
                break
            for handle in ready:
                i = handles[handle]
                if i in replies:
                    continue
                received = self._try_recv(i)
                if received is not None:
                    reply = received[0]
                    if reply[0] == "error":
                        raise WorkerError(
                            f"worker {i} (pid {self.procs[i].pid}) failed: {reply[1].strip().splitlines()[-1]}\n{reply[1]}"
                        )
                    if reply[0] != expected:
                        raise WorkerError(f"worker {i} sent '{reply[0]}' where '{expected}' was due (out of step)")
                    replies[i] = received
                elif not (proc := self.procs[i]).is_alive():
                    replies[i] = WorkerLost(i, f"worker {i} (pid {proc.pid}) died with exit code {proc.exitcode}")
            if first and replies:
                break
        return replies

    def _try_recv(self, i: int) -> tuple[tuple, int] | None:
        """A waiting reply from worker i and its size, or None (nothing yet, or its pipe closed)."""
        try:
            return receive_message(self.conns[i]) if self.conns[i].poll() else None
        except (EOFError, OSError):  # closed because the process died: reported by its sentinel
            self.procs[i].join(timeout=1)
            return None

    def _send(self, i: int, request: tuple) -> int:
        """Send `request` to worker i; returns its size in bytes."""
        try:
            return send_message(self.conns[i], request)
        except (BrokenPipeError, ConnectionResetError):
            self.procs[i].join(timeout=1)  # gone: its exit code is there, or soon will be
            raise WorkerLost(i, f"worker {i} (pid {self.procs[i].pid}) is gone (exit code {self.procs[i].exitcode})") from None

    def _send_all(self, request: tuple) -> list[int]:
        """Send `request` to every worker; each message's size in bytes."""
        return [self._send(i, request) for i in range(len(self.conns))]

    def _broadcast(self, weights: np.ndarray, version: int, wait: bool) -> tuple[int, int, list[WorkerLost]]:
        # The last `weights_kept` versions stay in their slots: what `_load` gives a replacement worker.
        slot = version % len(self.weights["version"])
        self.weights["weights"][slot] = weights
        self.weights["version"][slot] = version
        # Written once, read by every worker in place; then a control message each way per worker.
        written = self.weights["weights"][slot].nbytes + self.weights["version"][slot : slot + 1].nbytes
        sent = 0
        lost: dict[int, WorkerLost] = {}
        for i in range(len(self.conns)):
            try:
                sent += self._send(i, ("load", version, wait))
            except WorkerLost as loss:
                lost[i] = loss
        received = 0
        if wait:
            for i, reply in self._gather("loaded", [i for i in range(len(self.conns)) if i not in lost]).items():
                if isinstance(reply, WorkerLost):
                    lost[i] = reply
                else:
                    received += reply[1]
        return written + sent + received, 0, list(lost.values())  # one host: nothing crosses a network

    def _load(self, worker: int, version: int) -> None:
        self._send(worker, ("load", version, False))

    def _dispatch_to(self, worker: int, steps_per_env: int) -> None:
        self._send(worker, ("sample", steps_per_env))

    def _receive(self, handles: dict[int, None]) -> dict[int, tuple[FragmentReply, int] | WorkerLost]:
        replies = self._gather("fragment", list(handles))
        return {i: r if isinstance(r, WorkerLost) else (r[0][1], r[1]) for i, r in replies.items()}

    def _replace(self, worker: int) -> dict[str, Any]:
        proc, conn = self.procs[worker], self.conns[worker]
        if proc.is_alive():  # hung, or lost by its pipe: it must not sample on beside its replacement
            proc.kill()
        proc.join(timeout=5)
        conn.close()
        self._start_worker(worker)
        reply = self._gather("ready", [worker])[worker]
        if isinstance(reply, WorkerLost):
            raise WorkerError(f"the replacement for {reply}")
        return reply[0][1]

    def _clock_probe(self, worker: int) -> float:
        self._send(worker, ("clock",))
        deadline = time.monotonic() + self.timeout_s
        while (received := self._try_recv(worker)) is None:
            if not self.procs[worker].is_alive() or time.monotonic() > deadline:
                raise WorkerError(f"worker {worker} (pid {self.procs[worker].pid}) did not answer a clock probe")
            self.conns[worker].poll(0.05)
        message, _ = received
        if message[0] != "clock":
            raise WorkerError(f"worker {worker} sent '{message[0]}' where 'clock' was due (out of step)")
        return message[1]

    def _central_stepper(self, obs_dim: int) -> CentralStepper:
        return _SharedMemoryStepper(self, obs_dim)

    def _central_sampler(self, noise: NoiseSource) -> FragmentSampler | AsyncCentralSampler:
        if self.batch_size == self.spec.num_envs:
            return super()._central_sampler(noise)
        assert isinstance(self.stepper, _SharedMemoryStepper)
        return AsyncCentralSampler(self.stepper, self.policy, noise, self.batch_size)

    def close(self) -> None:
        procs = [proc for proc in self.procs if proc is not None]
        conns = [conn for conn in self.conns if conn is not None]
        for conn in conns:
            with contextlib.suppress(OSError, ValueError):
                send_message(conn, ("close",))
        # Asked by message rather than SIGTERM; those not gone within the grace period are killed. A worker may exit
        # (and its forkserver reap it) at any moment, so only those still there are handed on; psutil checks a pid is
        # the same process before it signals, so a reused pid is never hit.
        processes.stop(processes.existing(proc.pid for proc in procs if proc.is_alive()), CLOSE_GRACE_S, terminate=False)
        for proc in procs:
            proc.join(timeout=1)  # collect the exit status: `stop` never reaps
        for conn in conns:
            conn.close()
        for shared in self.shared:
            shared.close(unlink=True)
        self.procs, self.conns, self.shared = [], [], []

    def describe(self) -> dict[str, Any]:
        transport = (
            "weights: one shared-memory float32 buffer + version; fragments: pickled through pipes"
            if self.spec.inference == "worker"
            else "actions and step results: per-worker shared-memory arrays; pipes carry control messages only"
        )
        central = {"mode": "sync" if self.batch_size == self.spec.num_envs else "async", "batch_size": self.batch_size}
        return (
            super().describe()
            | {"start_method": self.start_method, "transport": transport, "placement": self.placement}
            | (central if self.spec.inference == "central" else {})
        )


class _SharedMemoryStepper(CentralStepper):
    """Central inference's transport: each worker's shared-memory slice plus a control message each way. Lockstep
    (`step`, every worker at once) or, for `AsyncCentralSampler`, one worker at a time (`send` and `receive_any`)."""

    def __init__(self, backend: MultiprocessingBackend, obs_dim: int) -> None:
        super().__init__(backend.spec, obs_dim)
        self.backend = backend

    @property
    def timeout_s(self) -> float:
        return self.backend.timeout_s

    def _reset_all(self) -> list[np.ndarray]:
        self.backend._send_all(("reset",))
        self.backend._receive_all("ok")
        return [shared["obs"].copy() for shared in self.backend.shared]

    def _step_all(self, actions: list[np.ndarray]) -> list[tuple[StepReply, int]]:
        for shared, part in zip(self.backend.shared, actions, strict=True):
            shared["actions"][:] = part
        sent = self.backend._send_all(("step",))
        received = self.backend._receive_all("ok")
        replies = []
        for i, (out, (_, back)) in enumerate(zip(sent, received, strict=True)):
            reply, written = self._read(i)
            # Shared memory written both ways (the actions, then everything the worker wrote), plus the two messages.
            replies.append((reply, self.backend.shared[i]["actions"].nbytes + written + out + back))
        return replies

    def _read(self, worker: int) -> tuple[StepReply, int]:
        """Worker `worker`'s last step as it wrote it into its shared memory, and the bytes it wrote."""
        shared = self.backend.shared[worker]
        cost = EnvCost(float(shared["env_cost_s"][0]), int(shared["env_cost_steps"][0]))
        reply = StepReply(
            StepResult(*(shared[f].copy() for f in StepResult.__dataclass_fields__)), float(shared["step_s"][0]), cost
        )
        return reply, sum(shared[f].nbytes for f in STEP_OUTPUTS)

    def send(self, worker: int, actions: np.ndarray) -> None:
        """Hand worker `worker` its envs' actions and ask it to step them (not waited for); counted as transfer."""
        began = time.perf_counter()
        shared = self.backend.shared[worker]
        shared["actions"][:] = actions
        self.bytes[worker] += shared["actions"].nbytes + self.backend._send(worker, ("step",))
        self.comm_s += time.perf_counter() - began

    def receive_any(self, workers: list[int], deadline: float) -> list[tuple[int, StepReply]]:
        """The step replies of whichever of `workers` (oldest request first) are ready, at least one, waiting until
        `deadline` (`time.monotonic()`) at most; a lost worker raises `WorkerLost` naming it, the oldest first."""
        replies = self.backend._gather("ok", workers, first=True, deadline=deadline)
        for reply in replies.values():
            if isinstance(reply, WorkerLost):
                raise reply
        began = time.perf_counter()
        out = []
        for worker, (_, back) in replies.items():
            reply, written = self._read(worker)
            self.compute_s[worker] += reply.seconds
            self.bytes[worker] += written + back
            self.env_cost[worker] += reply.env_cost
            out.append((worker, reply))
        self.comm_s += time.perf_counter() - began
        return out
