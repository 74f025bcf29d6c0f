"""Old `run.json` files read as today's: brought forward one schema version at a time when loaded (asv's
`update_to_N`), never refused and never rewritten.

`update_to_N` takes a record of version N-1, as any commit of that version wrote it (a key added partway
through a version is filled where it is missing), and returns a copy at version N. It derives what the
old record determines exactly (a sum of two timings, a running total, a setting that had one value then)
and leaves out what the old code never measured. Each key left out that today's harness always writes is
named in the record's `not_recorded`, as a path with `[*]` for any index: the schema check allows exactly
those, and the report shows them as "not recorded". A figure kept but measured differently then is one
line in `caveats`, which `compare` and the report print. `migrated_from` is the file's own version.

Versions, by the commits that wrote them (tests/fixtures/runs/ holds a run of each version's last commit):
1: 481cf1b..fe5de4c^; 2: fe5de4c..627bf98^; 3: 627bf98..6766c94^; 4: 6766c94..issue 21^; 5: issue 21..issue 23^;
6: issue 23..issue 23's second algorithm^; 7: ..issue 23's configurable network^; 8: ..issue 24^; 9: ..issue 23's
PPO-EWMA^; 10: since.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator
from typing import Any

from harness.records import SCHEMA_VERSION, json_path, json_type

OLDEST_VERSION = 1

Record = dict[str, Any]
Path = list[str | int]

MIGRATIONS: dict[int, Callable[[Record], Record]] = {}
"""Version reached -> the step that reaches it from the one before."""


class Damaged(ValueError):
    """An old record without what its own version always wrote: `PATH: problem`, on one line."""


def migrate(record: Record) -> Record:
    """`record` at SCHEMA_VERSION: itself if it is already, else a copy brought forward step by step, with
    `migrated_from` set. Its `schema_version` must be one of OLDEST_VERSION..SCHEMA_VERSION (the caller
    checks, and words the refusal); raises `Damaged` naming the JSON path of a key the old version lacks."""
    version = record["schema_version"]
    if version == SCHEMA_VERSION:
        return record
    for target in range(version + 1, SCHEMA_VERSION + 1):
        record = MIGRATIONS[target](record)
    record["migrated_from"] = version
    return record


def _step(target: int) -> Callable[[Callable[[Record], None]], Callable[[Record], Record]]:
    """Register `update` as the step to `target`; it edits a copy in place, and the step sets the version."""

    def register(update: Callable[[Record], None]) -> Callable[[Record], Record]:
        @functools.wraps(update)
        def step(record: Record) -> Record:
            if record.get("schema_version") != target - 1:
                raise ValueError(f"{update.__name__} takes a version {target - 1} record, got {record.get('schema_version')!r}")
            record = copy.deepcopy(record)  # the caller's record stays as the file had it
            update(record)
            record["schema_version"] = target
            return record

        MIGRATIONS[target] = step
        return step

    return register


# --- version 1 -> 2 ---------------------------------------------------------------------------------

V1_LEARNER_STATS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "gae_s", "update_s")
"""What a version-1 iteration kept of PPO's update beside the harness's timings (algorithms/ppo.py's
UpdateStats, then the two phase times), and version 2 keeps in its `learner` map."""


@_step(2)
def update_to_2(record: Record) -> None:
    """Version 1 -> 2 (fe5de4c, issue 8: the learner seam). Version 1 timed GAE (`gae_s`) and the update
    (`update_s`) back to back around two calls; version 2 times the one `Learner.train` call that does
    both, so `train_s` is their sum, and the PPO statistics move into the iteration's `learner` map.
    Version 1 had one learner, PPO on the CPU without compiling: each case's `algorithm` and
    `ppo.compile`, each ok run's `learner`. It did not time building the learner, so that run's
    `learner.startup_s` (part of the start-up column since version 2) is not recorded."""
    for path, case in _cases(record):
        case.setdefault("algorithm", {"name": "ppo", "device": "cpu"})
        case.setdefault("claims", {})  # a case had no claims before bb1ae93
        _table(case, "ppo", path).setdefault("compile", False)
    for path, run in _runs(record):
        for at, iteration in _iterations(run, path):
            iteration["train_s"] = _number(iteration, "gae_s", at) + _number(iteration, "update_s", at)
            iteration["learner"] = {k: iteration.pop(k) for k in V1_LEARNER_STATS if k in iteration}
        if run.get("status") == "ok":
            run["learner"] = {"name": "ppo", "device": "cpu"}
    _not_recorded(record, "$.cases[*].runs[*].learner.startup_s")
    _caveat(record, "start-up: version 1 did not time building the learner, which start-up counts since version 2")


# --- version 2 -> 3 ---------------------------------------------------------------------------------

MEASURED_SINCE_3 = ("sync_bytes_serialized", "sync_bytes_network", "dispatch_s", "transfer_uncertainty_s",
                    "clock_violations", "asked_s", "joined_s", "workers", "env_cost_ms_mean", "env_cost_steps")  # fmt: skip
"""Iteration keys version 3 measured first (issue 10): serialized weight bytes and what crossed the network,
the request dispatch, clock offsets, per-worker times, the env's measured step cost."""


@_step(3)
def update_to_3(record: Record) -> None:
    """Version 2 -> 3 (627bf98, issue 10: numbers a reviewer cannot fault). First what version 2 added
    after its first commit (3a81325, overlapped sampling), for files written before it: every case ran
    the `sync` schedule (`max_lag` 1, PPO not `decoupled`), so each iteration's policy lag is 0;
    `train_wall_s` is the running sum of the iterations' `total_s`, as version 2 kept it, and an
    evaluation's is that sum over the iterations before it.

    Then version 3: `sync_in_process` is whether version 2 left `sync_bytes` null (it did exactly when no
    policy copy left the learner's process: in-process backends, central inference). `sync_bytes` and
    `transfer_bytes` keep version 2's formulas (array sizes, weights counted once per worker), and
    `transfer_s` its wall-clock difference clamped at 0: caveats, not figures to compare. What version 3
    measured first (MEASURED_SINCE_3) is not recorded."""
    for path, case in _cases(record):
        backend = _table(case, "backend", path)
        backend.setdefault("schedule", "sync")
        backend.setdefault("max_lag", 1)
        ppo = _table(case, "ppo", path)
        ppo.setdefault("decoupled", False)
        ppo.setdefault("importance_weight_cap", 2.0)  # its default when it came (3a81325); unused while not decoupled
    for path, run in _runs(record):
        wall = 0.0
        walls = []  # (steps trained, wall time of the iterations so far), after each iteration
        for at, iteration in _iterations(run, path):
            wall += _number(iteration, "total_s", at)
            iteration.setdefault("train_wall_s", wall)
            iteration.setdefault("policy_lag", {"min": 0, "mean": 0.0, "max": 0})
            walls.append((_number(iteration, "steps_trained", at), _number(iteration, "train_wall_s", at)))
            iteration["sync_in_process"] = _field(iteration, "sync_bytes", at) is None
        evaluations = list(_each(run, "evaluations", path, required=run.get("status") == "ok"))
        if "final_evaluation" in run:
            evaluations.append(([*path, "final_evaluation"], _table(run, "final_evaluation", path)))
        for at, evaluation in evaluations:
            # An evaluation follows the iteration that trained its `steps` (harness/case.py of both versions).
            steps = _number(evaluation, "steps", at)
            evaluation.setdefault("train_wall_s", max((w for trained, w in walls if trained <= steps), default=0.0))
    _not_recorded(record, *(f"$.cases[*].runs[*].iterations[*].{key}" for key in MEASURED_SINCE_3))
    _caveat(record, "bytes: computed by formula in version ≤ 2 (array sizes, weights once per worker), measured "
                    "serialized sizes since version 3")  # fmt: skip
    _caveat(record, "transfer time: a wall-clock difference clamped at 0 in version ≤ 2, one clock and never clamped "
                    "since version 3")  # fmt: skip
    _caveat(record, "request dispatch, per-worker times and the measured env step cost: not recorded before version 3")


# --- version 3 -> 4 ---------------------------------------------------------------------------------


@_step(4)
def update_to_4(record: Record) -> None:
    """Version 3 -> 4 (6766c94, issue 12: any gymnasium env): each case's `env.options`, the keyword
    arguments of `gymnasium.make`, is `env.kwargs`. Records from before 074f57b have no
    `measure.iteration_timeout_s` (no deadline then): not recorded."""
    for path, case in _cases(record):
        env = _table(case, "env", path)
        _field(env, "options", [*path, "env"])  # a version-3 env always has it: name the path if this one does not
        env["kwargs"] = env.pop("options")
    for path, part in _each(record, "parts", []):
        if "iteration_timeout_s" not in _table(part, "measure", path):
            _not_recorded(record, "$.parts[*].measure.iteration_timeout_s")


# --- version 4 -> 5 ---------------------------------------------------------------------------------

ENV_COSTS_SINCE_5 = {"step_cost_distribution": "constant", "step_cost_cv": 0.0, "slow_env_fraction": 0.0,
                     "slow_env_factor": 1.0, "reset_cost_ms": 0.0}  # fmt: skip
"""The env cost model's keys (issue 21), at the values that mean what a version-4 cost was: constant, the same
for every env, nothing on reset."""
SPLIT_SINCE_5 = ("sample_env_s", "sample_inference_s", "sample_other_s")


@_step(5)
def update_to_5(record: Record) -> None:
    """Version 4 -> 5 (issue 21: env costs that vary, where sampling time goes): a version-4 step cost was the
    same constant for every env and every step, with no reset cost, so the cost model's keys are filled exactly.
    Sampling's split into env step, inference and the rest was not measured: not recorded."""
    for path, case in _cases(record):
        env = _table(case, "env", path)
        for key, value in ENV_COSTS_SINCE_5.items():
            env.setdefault(key, value)
        case.setdefault("torch_threads", None)  # every case then ran with its part's [measure] torch_threads
    _not_recorded(record, *(f"$.cases[*].runs[*].iterations[*].{key}" for key in SPLIT_SINCE_5))
    _not_recorded(record, *(f"$.cases[*].runs[*].iterations[*].workers[*].{key}" for key in ("env_s", "inference_s")))


# --- version 5 -> 6 ---------------------------------------------------------------------------------

SGD_LAG_SINCE_6 = ("sgd_steps_min", "sgd_steps_mean", "sgd_steps_max")


@_step(6)
def update_to_6(record: Record) -> None:
    """Version 5 -> 6 (issue 23): the learner's time between iterations (writing the record, progress) was off the
    clock, so a version-5 `total_s` is the sum of three phases and `between_s` was not measured: not recorded. Nor
    was policy lag in optimiser steps. Under overlap the workers sampled during that time and during evaluations,
    which a caveat says. PPO had no KL early stopping: `target_kl` is null, exactly."""
    _fill_ppo_settings_since_6(record)
    _not_recorded(record, "$.cases[*].runs[*].iterations[*].between_s")
    _not_recorded(record, *(f"$.cases[*].runs[*].iterations[*].policy_lag.{key}" for key in SGD_LAG_SINCE_6))
    if any(_table(case, "backend", path).get("schedule") == "overlap" for path, case in _cases(record)):
        _caveat(record, "overlap before version 6: the workers sampled while the learner evaluated and wrote its record, "
                        "off the clock, so its seconds to the threshold and its FPS were slightly favoured")  # fmt: skip


PPO_SINCE_6 = {"target_kl": None}
"""PPO settings added partway through version 6 (issue 23), at the value that means what the code before them did."""


def _fill_ppo_settings_since_6(record: Record) -> None:
    for path, case in _cases(record):
        ppo = _table(case, "ppo", path)
        for key, value in PPO_SINCE_6.items():
            ppo.setdefault(key, value)


# --- version 6 -> 7 ---------------------------------------------------------------------------------


@_step(7)
def update_to_7(record: Record) -> None:
    """Version 6 -> 7 (issue 23: a second algorithm). A case's learner settings were its `ppo` table, the only learner
    there was; they are `hyperparameters` now, whichever learner's they are. A version-6 record written before
    `target_kl` came lacks it: null, no KL early stopping, as its code did."""
    _fill_ppo_settings_since_6(record)
    for _, case in _cases(record):
        case["hyperparameters"] = case.pop("ppo")


# --- version 7 -> 8 ---------------------------------------------------------------------------------


SETTINGS_SINCE_7 = {"ppo": {"recompute_advantages": False}, "appo": {"clip_against": "proximal"}}
"""Learner settings added partway through version 7 (issue 23), by learner, at the value that means what the code
before them did: PPO's GAE from the sampler's values, APPO's clip against the policy at the update's start."""


@_step(8)
def update_to_8(record: Record) -> None:
    """Version 7 -> 8 (issue 23: a configurable network). Every network was two tanh layers of `hidden_size` units:
    `hidden_sizes` is that width twice, and `activation` is tanh, exactly. Weights were published once per update
    (`publish_every` "iteration", one publication per batch). A version-7 record written before
    `recompute_advantages` (PPO) or `clip_against` (APPO) came lacks it: filled with what its code did."""
    for path, case in _cases(record):
        settings = _table(case, "hyperparameters", path)
        width = int(_number(settings, "hidden_size", [*path, "hyperparameters"]))
        del settings["hidden_size"]
        settings["hidden_sizes"], settings["activation"] = [width, width], "tanh"
        # Weights were published once per update: no other value existed.
        _table(case, "backend", path).update(publish_every="iteration", publications_per_batch=1)
        learner = _table(case, "algorithm", path).get("name")
        filled = SETTINGS_SINCE_7.get(learner, {}) if isinstance(learner, str) else {}  # the schema check names a bad name
        for key, value in filled.items():
            settings.setdefault(key, value)


UPDATE_LEARNERS = ("ppo", "appo")
"""The learners built on PPO's minibatch update (`algorithms.config.UpdateSettings`), whose settings gained `kernel`."""


@_step(9)
def update_to_9(record: Record) -> None:
    """Version 8 -> 9 (issue 24: a second kernel for the minibatch step, and the learner's threads while it trains).
    Every PPO and APPO update ran ATen's ops: `kernel` is "torch", exactly. A learner named by `module:Class` keeps its
    settings as they were. Every learner trained with its case's `torch_threads`: `train_threads` is null."""
    for path, case in _cases(record):
        case.setdefault("train_threads", None)
        settings = _table(case, "hyperparameters", path)
        learner = _table(case, "algorithm", path).get("name")
        if isinstance(learner, str) and learner in UPDATE_LEARNERS:  # the schema check names a bad name
            settings.setdefault("kernel", "torch")


@_step(10)
def update_to_10(record: Record) -> None:
    """Version 9 -> 10 (issue 23: PPO-EWMA, and the lag study in quick reports). No PPO update averaged its weights into a
    proximal policy: `ewma_decay` is null, exactly; other learners' settings stay as they were. Every part's `--quick`
    kept three repeats and seeds: `quick_runs` is 3."""
    for path, part in _each(record, "parts", []):
        _table(part, "measure", path).setdefault("quick_runs", 3)
    for path, case in _cases(record):
        settings = _table(case, "hyperparameters", path)
        if _table(case, "algorithm", path).get("name") == "ppo":
            settings.setdefault("ewma_decay", None)


# --- reading an old record, naming the path of what it lacks ----------------------------------------


def _field(obj: Any, key: str, path: Path) -> Any:
    if not isinstance(obj, dict):
        raise Damaged(f"{json_path(path)}: expected object, got {json_type(obj)}")
    if key not in obj:
        raise Damaged(f"{json_path([*path, key])}: required key is missing")
    return obj[key]


def _table(obj: Any, key: str, path: Path) -> Record:
    value = _field(obj, key, path)
    if not isinstance(value, dict):
        raise Damaged(f"{json_path([*path, key])}: expected object, got {json_type(value)}")
    return value


def _number(obj: Any, key: str, path: Path) -> float:
    value = _field(obj, key, path)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Damaged(f"{json_path([*path, key])}: expected number, got {json_type(value)}")
    return float(value)


def _each(obj: Any, key: str, path: Path, required: bool = True) -> Iterator[tuple[Path, Any]]:
    """The items of the list at `obj[key]`, each with its path; an absent optional list has none."""
    if not required and isinstance(obj, dict) and key not in obj:
        return
    items = _field(obj, key, path)
    if not isinstance(items, list):
        raise Damaged(f"{json_path([*path, key])}: expected array, got {json_type(items)}")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise Damaged(f"{json_path([*path, key, index])}: expected object, got {json_type(item)}")
        yield [*path, key, index], item


def _cases(record: Record) -> Iterator[tuple[Path, Record]]:
    yield from _each(record, "cases", [])


def _runs(record: Record) -> Iterator[tuple[Path, Record]]:
    for path, case in _cases(record):
        yield from _each(case, "runs", path)


def _iterations(run: Record, path: Path) -> Iterator[tuple[Path, Record]]:
    """An ok run always has its iterations; a failed one keeps those that finished, if any."""
    yield from _each(run, "iterations", path, required=run.get("status") == "ok")


def _not_recorded(record: Record, *patterns: str) -> None:
    absent = record.setdefault("not_recorded", [])
    absent += [p for p in patterns if p not in absent]


def _caveat(record: Record, line: str) -> None:
    record.setdefault("caveats", []).append(line)
