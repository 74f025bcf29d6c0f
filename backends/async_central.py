"""Async central inference: the learner acts on whichever envs are ready, EnvPool's async mode (Weng et al. 2022,
arXiv:2206.10558, section 3) rebuilt on our own worker processes, where the harness's synthetic step costs apply.

Lockstep central inference (`FragmentSampler` over a `CentralStepper`) waits for every worker each step, so one
slow env holds back all the rest. Here the learner sends actions to the ready workers, waits until `batch_size`
envs' workers have replied (a worker's envs step together, so `batch_size` is a whole number of workers), runs
one batched policy call for those envs and sends again; the others keep stepping meanwhile. Each env draws its
noise from its own generator, seeded `(seed, env id)`, one draw per step of that env: an env's trajectory does
not depend on which envs it was batched with, so it is the one lockstep sampling gives (same seed, same weights).
Once the steps sent promise enough transitions for the request, nothing more is sent and the steps in flight are
drained (as EnvPool's `_step_until` in backends/envpool_backend.py), so no env steps while the learner trains;
the few transitions beyond the request carry over to the next one.

Workers autoreset in the same step (gymnasium's SAME_STEP: `StepResult.final_obs`), so unlike EnvPool there
are no reset steps: every step is a transition, and its next obs is `final_obs` (the ended episode's last obs
where one ended). Per-env counts still differ (a fast env steps more often), so each env's transitions form a
stream, packed into `(T, N)` columns by `backends.streams`.

Figures. The stepper's counters mean what they mean in lockstep where they can: per worker its summed stepping
time, the bytes its steps moved both ways, the step cost its envs paid; `worker_compute_s` is the busiest
worker's summed stepping. Steps overlap each other and the learner's policy calls here, so a round trip less the
slowest step means nothing: `transfer_s` is the learner's own time handing out actions and reading results
(shared-memory copies and the control messages). The sampling split: env_s is the learner sending and waiting
for workers, inference_s its policy calls that chose actions.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from algorithms.inference import InferencePolicy
from algorithms.rollout import Rollout
from backends.base import BackendSpec
from backends.sampling import NoiseSource, SamplingSplit, StepResult
from backends.streams import Layout, StreamRollouts
from backends.workers import StepReply


class AsyncStepper(Protocol):
    """A central stepper that steps one worker at a time and keeps `CentralStepper`'s counters."""

    spec: BackendSpec
    compute_s: list[float]
    """Per worker, its summed stepping time (kept by `receive_any`)."""
    worker_s: float

    def reset(self) -> np.ndarray: ...

    def send(self, worker: int, actions: np.ndarray) -> None: ...

    def receive_any(self, workers: list[int], deadline: float) -> list[tuple[int, StepReply]]: ...

    @property
    def timeout_s(self) -> float:
        """How long a worker may take to reply before it counts as hung: the backend's, as it is at each wait."""
        ...


class AsyncCentralSampler:
    """Samples requests of `steps_per_env` steps per env, acting on `batch_size` ready envs at a time (module docstring)."""

    def __init__(self, stepper: AsyncStepper, policy: InferencePolicy, noise: NoiseSource, batch_size: int) -> None:
        spec = stepper.spec
        self.stepper, self.policy, self.noise = stepper, policy, noise
        self.workers_per_batch = batch_size // spec.envs_per_worker
        self.env_ids = [spec.worker_env_ids(w) for w in range(spec.workers)]
        self.obs = stepper.reset()
        self.rollouts = StreamRollouts(spec.num_envs, self.obs.shape[1], noise.action)
        self.sent: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        """Per worker in flight: the actions, log-probs and values its envs were sent (obs are in `self.obs`)."""
        self.last_split = SamplingSplit()
        """Where the last `sample` call's time went."""

    @property
    def last_layout(self) -> Layout:
        """Which env's transitions each column of the last rollout holds (`StreamRollouts.last_layout`)."""
        return self.rollouts.last_layout

    def sample(self, steps_per_env: int) -> Rollout:
        """Exactly `steps_per_env * num_envs` transitions, stepped with the policy's current weights (and any
        carried over from the last request), as a `(T, N)` rollout."""
        began = time.perf_counter()
        need = steps_per_env * len(self.obs) - self.rollouts.held
        env_s, inference_s = self._step_until(need) if need > 0 else (0.0, 0.0)
        # Every worker stepped in parallel with the others: the busiest one bounds what they could have done.
        self.stepper.worker_s = max(self.stepper.compute_s)
        rollout = self.rollouts.rollout(steps_per_env, self.policy)
        self.last_split = SamplingSplit(env_s, inference_s, time.perf_counter() - began)
        return rollout

    def _step_until(self, need: int) -> tuple[float, float]:
        """Step envs until the streams hold `need` more transitions, then drain; returns (env_s, inference_s).

        Every worker is ready at the start (nothing is in flight between requests) and is sent at once; after
        that, whole batches of ready workers, in the order they replied. In flight: each worker's send time, so
        that the oldest request sets the deadline (a worker that never replies is found however busy the
        others keep the learner).
        """
        env_s = inference_s = 0.0
        ready, in_flight, promised = list(range(len(self.env_ids))), {}, 0
        while True:
            if promised < need and len(ready) >= self.workers_per_batch:
                batch_count = len(ready) if not in_flight else self.workers_per_batch
                batch, ready = ready[:batch_count], ready[batch_count:]
                acting = time.perf_counter()
                self._act(batch)
                sending = time.perf_counter()
                for worker in batch:
                    self.stepper.send(worker, self.sent[worker][0])
                    in_flight[worker] = time.monotonic()
                    promised += len(self.env_ids[worker])
                env_s += time.perf_counter() - sending
                inference_s += sending - acting
                continue
            if not in_flight:
                return env_s, inference_s
            waiting = time.perf_counter()
            oldest_first = sorted(in_flight, key=in_flight.__getitem__)
            replies = self.stepper.receive_any(oldest_first, in_flight[oldest_first[0]] + self.stepper.timeout_s)
            env_s += time.perf_counter() - waiting
            for worker, reply in replies:
                del in_flight[worker]
                self._record(worker, reply.result)
                ready.append(worker)

    def _act(self, batch: list[int]) -> None:
        """One policy call for the envs of the workers in `batch`; each env's noise from its own generator."""
        ids = np.concatenate([self.env_ids[w] for w in batch])
        action = self.noise.action
        noise = np.stack([action.draw_noise(self.noise.generators[i]) for i in ids])
        actions, log_probs, values = self.policy.act(self.obs[ids], noise)
        first = 0
        for worker in batch:
            k = len(self.env_ids[worker])
            self.sent[worker] = (actions[first : first + k], log_probs[first : first + k], values[first : first + k])
            first += k

    def _record(self, worker: int, step: StepResult) -> None:
        """Worker `worker`'s envs' transitions from the step it replied with, as one block; their obs move on."""
        actions, log_probs, values = self.sent.pop(worker)
        envs = self.env_ids[worker]
        self.rollouts.add(envs, self.obs[envs], actions, log_probs, values, step.rewards, step.terminations, step.truncations,
                          step.final_obs)  # fmt: skip
        self.obs[envs] = step.obs
