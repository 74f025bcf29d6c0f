"""`envpool`: EnvPool's C++ thread pool steps the envs, as itself; the learner infers centrally, batched.

EnvPool (Weng et al. 2022, arXiv:2206.10558) runs its own C++ implementations of the envs on its own
threads: the third-party sampler plugged in behind the same interface, not rebuilt from our parts
(STYLE.md, Sample Factory's runners). Two modes, from `options.batch_size`:

- sync (`batch_size` = num_envs, the default): every env steps in lockstep, one policy call per step;
- async (`batch_size` b dividing num_envs): the learner acts on whichever b envs EnvPool says are ready
  (`recv`), so one slow env does not hold the rest back.

Semantics. EnvPool autoresets on the *next* step: the step after an episode ends is a reset step (the
action ignored, reward 0, the new episode's first obs, `elapsed_step` 0). The harness's semantics are
gymnasium's same-step autoreset (`backends.sampling.AUTORESET_MODE`), so a reset step is not a
transition here: no action, no reward. The obs EnvPool returns on an episode's last step is that
episode's last obs, so a truncation bootstraps from V(it) (`final_values`), a termination from nothing.

Packing. Reset steps make per-env transition counts differ, yet a request is exactly `num_steps`
transitions in a `(T, N)` rollout: each env's transitions form a stream, packed into columns with carry-over
by `backends.streams` (its docstring says how a column is filled and a cut bootstrapped).
"""

from __future__ import annotations

import time
import warnings

import envpool
import numpy as np

from algorithms.inference import InferencePolicy
from backends import REGISTRY, EnvPoolOptions
from backends.base import Backend, BackendSpec, Collected, PolicySpec, SyncReport
from backends.envs import EnvSpec
from backends.sampling import NoiseSource, SamplingSplit
from backends.streams import Layout, StreamRollouts

MAPPED_KWARGS = ("max_episode_steps",)
"""Env kwargs that mean the same to EnvPool's config as to `gymnasium.make`; no other kwarg does."""
SHOWN_IDS = ("Pendulum-v1", "CartPole-v1", "Acrobot-v1", "MountainCar-v0", "MountainCarContinuous-v0")


def check_env(env: EnvSpec) -> None:
    """Raise ValueError, one line, for an env EnvPool cannot run as the suite asks (the registry entry's `env_check`)."""
    ids = envpool.list_all_envs()
    if env.id not in ids:
        shown = ", ".join(i for i in SHOWN_IDS if i in ids)
        raise ValueError(f"EnvPool has no env '{env.id}'; it has {shown}, ... ({len(ids)} in all: envpool.list_all_envs())")
    if unmapped := sorted(set(env.kwargs) - set(MAPPED_KWARGS)):
        raise ValueError(f"backend 'envpool' takes EnvPool's own env config, not gymnasium kwargs: remove {', '.join(unmapped)} "
                         f"(only {', '.join(MAPPED_KWARGS)} maps onto it)")  # fmt: skip
    if env.has_cost:
        raise ValueError("backend 'envpool' cannot add a synthetic step or reset cost: its envs step in EnvPool's C++ "
                         "threads, where the harness runs no code; remove step_cost_ms and reset_cost_ms")  # fmt: skip


class EnvPoolBackend(Backend):
    """EnvPool's envs, stepped by its threads in the learner's process; one central policy copy."""

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        REGISTRY[spec.name].check(spec)
        settings = spec.settings
        assert isinstance(settings, EnvPoolOptions)
        self.num_threads = settings.num_threads
        self.batch_size = settings.batch_size or spec.num_envs
        self.pool = None
        self.last_split = SamplingSplit()
        """Where the last fragment's time went: env_s waiting in EnvPool's send and recv, inference_s in policy
        calls that chose actions (bootstrap values are the rest, as in `FragmentSampler`)."""
        self.rollouts: StreamRollouts | None = None

    def start(self, env: EnvSpec, policy: PolicySpec, seed: int) -> None:
        check_env(env)
        n = self.spec.num_envs
        config = {"max_episode_steps": env.kwargs["max_episode_steps"]} if "max_episode_steps" in env.kwargs else {}
        if self.num_threads is not None:
            config["num_threads"] = self.num_threads
        # env i seeded seed + i, given explicitly rather than trusting EnvPool's default to stay that.
        with warnings.catch_warnings():  # EnvPool's Box spaces have float64 bounds, which gymnasium warns it casts
            warnings.simplefilter("ignore", UserWarning)
            self.pool = envpool.make_gymnasium(
                env.id, num_envs=n, batch_size=self.batch_size, seed=seed, env_seed=[seed + i for i in range(n)], **config
            )
            obs_shape, self.action_space = self.pool.observation_space.shape, self.pool.action_space  # made when first asked
        if obs_shape != (policy.obs_dim,):
            raise ValueError(f"EnvPool's '{env.id}' observes {obs_shape}, the policy ({policy.obs_dim},)")
        self.policy = InferencePolicy(policy)
        self.noise = NoiseSource(np.arange(n), seed, policy.action)
        self.obs = np.zeros((n, policy.obs_dim), np.float32)
        self.resetting = np.zeros(n, bool)
        """The env's last step ended an episode, so its next one is EnvPool's reset step."""
        self.sent_actions = np.zeros((n, *policy.action.action_shape), policy.action.action_dtype)
        self.sent_log_probs, self.sent_values = np.zeros(n, np.float32), np.zeros(n, np.float32)
        """Per env in flight on a real step: the action, log-prob and value it was sent with (its obs is still
        `obs`, which moves on only when the env comes back)."""
        self.rollouts = StreamRollouts(n, policy.obs_dim, policy.action)
        self.pool.async_reset()
        for _ in range(n // self.batch_size):  # recv hands back batch_size envs at a time
            obs, *_, info = self.pool.recv()
            self.obs[info["env_id"]] = obs

    def set_weights(self, weights: np.ndarray, version: int, wait: bool = True) -> SyncReport:
        # Nothing is in flight between requests: loading now is always "before the next fragment".
        self.policy.load_flat(weights, version)
        return SyncReport(bytes_sent=None)

    def submit(self, num_steps: int) -> None:
        self.requests.append(self.steps_per_env(num_steps))

    def take(self) -> Collected:
        began = time.perf_counter()
        steps = self.requests.popleft()
        need = steps * self.spec.num_envs - self.rollouts.held
        env_s, inference_s = self._step_until(need) if need > 0 else (0.0, 0.0)
        rollout = self.rollouts.rollout(steps, self.policy)
        self.last_split = SamplingSplit(env_s, inference_s, time.perf_counter() - began)
        return Collected(rollout, fragment_versions=(rollout.policy_version,), **self.last_split.figures())

    def _step_until(self, need: int) -> tuple[float, float]:
        """Step envs until the streams hold `need` more transitions; returns (env_s, inference_s).

        Whole batches only: recv waits for exactly batch_size envs, so every env that comes back is sent again
        (or none is); once the real steps sent reach `need`, nothing more is sent and the in-flight ones are
        drained, so no env steps while the learner trains.
        """
        env_s = inference_s = 0.0
        ready, in_flight, promised = np.arange(self.spec.num_envs), 0, 0
        while True:
            if promised < need:
                acting = time.perf_counter()
                actions = self._act(ready)
                sending = time.perf_counter()
                self.pool.send(actions, ready.astype(np.int32))
                env_s += time.perf_counter() - sending
                inference_s += sending - acting
                promised += int((~self.resetting[ready]).sum())
                in_flight += len(ready)
            if not in_flight:
                return env_s, inference_s
            waiting = time.perf_counter()
            obs, rewards, terminations, truncations, info = self.pool.recv()
            env_s += time.perf_counter() - waiting
            ready = info["env_id"].astype(np.int64)
            in_flight -= len(ready)
            self._record(ready, obs, rewards, terminations, truncations, info["elapsed_step"])

    def _act(self, ready: np.ndarray) -> np.ndarray:
        """The env actions for `ready`, from one policy call over those not due a reset step (whose action
        EnvPool ignores: they get a placeholder and draw no noise)."""
        action = self.noise.action
        raw = np.zeros((len(ready), *action.action_shape), action.action_dtype)
        acting = np.flatnonzero(~self.resetting[ready])
        if len(acting):
            ids = ready[acting]
            noise = np.stack([action.draw_noise(self.noise.generators[i]) for i in ids])
            raw[acting], self.sent_log_probs[ids], self.sent_values[ids] = self.policy.act(self.obs[ids], noise)
            self.sent_actions[ids] = raw[acting]
        return action.to_env(raw, self.action_space)

    def _record(self, ready, obs, rewards, terminations, truncations, elapsed) -> None:  # noqa: ANN001 - EnvPool's arrays
        """The transitions of the envs `ready` came back from a real step, as one block; reset steps are none."""
        resetting = self.resetting[ready]
        # A check on our reading of EnvPool: a newer EnvPool that reset in the same step would break it.
        if (unreset := ready[resetting & (elapsed != 0)]).size:
            raise RuntimeError(f"EnvPool env {unreset[0]} did not reset on the step after its episode ended")
        stepped = ~resetting
        ids = ready[stepped]
        # EnvPool's obs on an episode's last step is that episode's last: the stream's next obs as it is.
        self.rollouts.add(ids, self.obs[ids], self.sent_actions[ids], self.sent_log_probs[ids], self.sent_values[ids],
                          rewards[stepped], terminations[stepped], truncations[stepped], obs[stepped])  # fmt: skip
        self.resetting[ready] = stepped & (terminations | truncations)
        self.obs[ready] = obs

    @property
    def last_layout(self) -> Layout:
        """Which env's transitions each column of the last rollout holds (`StreamRollouts.last_layout`)."""
        return self.rollouts.last_layout if self.rollouts is not None else []

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def describe(self) -> dict:
        return super().describe() | {
            "transport": "in-process (EnvPool C++ threads)",
            "mode": "sync" if self.batch_size == self.spec.num_envs else "async",
            "num_threads": self.num_threads,
            "batch_size": self.batch_size,
            "envpool_version": envpool.__version__,
        }
