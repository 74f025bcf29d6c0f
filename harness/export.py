"""A run's per-iteration curves for TensorBoard: `python -m harness export --tensorboard RUN_DIR [--out DIR]`.

Every finished case run (one case, one repeat or seed) becomes one event stream, a TensorBoard "run", in
`OUT/<case id>/repeat<R>` (throughput) or `OUT/<case id>/seed<S>` (convergence); the case id's own parts
(`part/label/wWORKERSxeENVS`) are folders, so `tensorboard --logdir OUT` lists the streams by case.

Each point's step is the env steps the case run had sampled (and trained on) by the end of the iteration,
warm-up iterations included, as `steps_trained` counts them; evaluations carry the steps they were taken at,
so both lie on one axis. Its wall time is the run's start (`created` in run.json) plus that case run's iteration
time so far (`train_wall_s`, evaluations excluded): TensorBoard's Wall axis then starts every case run at one
origin and compares them in training seconds. It is not the time of day the iteration ran.

The scalars, per measured iteration (warm-up iterations are skipped, as in every statistic of the report):
    throughput/fps             the iteration's env steps over its wall time (steps / total_s), end to end
    time/<phase>_s             between_s, sync_s, collect_s, train_s, total_s; remote backends also transfer_s, dispatch_s,
                               worker_compute_s
    bytes/<field>              sync_bytes, sync_bytes_network, transfer_bytes, where a policy copy or a batch
                               crossed a process boundary (none in-process)
    train/episode_return_mean  training episodes that ended in the batch (stochastic policy), where any did
    learner/<name>             every named statistic the learner returned (PPO: losses, KL, entropy, gae_s, ...)
    policy_lag/min|mean|max    under the overlap schedule only (a sync batch never lags); in versions, and as
    policy_lag/sgd_steps_*     optimiser steps where the learner counts them
and per evaluation (convergence mode): eval/mean_return, and eval/final_mean_return for the final one.
Field names are run.json's (harness/records.py says what each measures). Failed case runs are left out: their
partial iterations stay in run.json. Like the rest of the CLI, the export never writes over earlier output.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from harness.analysis import PHASES
from harness.errors import HarnessError
from harness.results import load_run

DEFAULT_FOLDER = "tensorboard"
"""Where the export goes inside the run folder unless --out says otherwise."""


class Point(NamedTuple):
    """One scalar of a stream."""

    tag: str
    step: int
    wall_time: float
    """Seconds since the epoch, as TensorBoard reads them."""
    value: float


@dataclass(frozen=True)
class Stream:
    """One case run's points, and the folder under OUT they go to."""

    name: str
    points: tuple[Point, ...]


@dataclass(frozen=True)
class Series:
    """A scalar of each measured iteration: its tag, and its value in the iteration record (None: not there)."""

    tag: str
    value: Callable[[dict[str, Any]], float | None]


def _field(name: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda it: it.get(name)


def _fps(it: dict[str, Any]) -> float | None:
    return it["steps"] / it["total_s"] if it["total_s"] > 0 else None


def _sync_network_bytes(it: dict[str, Any]) -> float | None:
    # The record keeps 0 rather than null in-process, where no broadcast exists: shown where sync_bytes is.
    return it.get("sync_bytes_network") if it.get("sync_bytes") is not None else None


SERIES = (
    Series("throughput/fps", _fps),
    *(Series(f"time/{key}", _field(key))
      for key in (*(f"{phase}_s" for phase in PHASES), "total_s", "transfer_s", "dispatch_s", "worker_compute_s")),
    Series("bytes/sync_bytes", _field("sync_bytes")),
    Series("bytes/sync_bytes_network", _sync_network_bytes),
    Series("bytes/transfer_bytes", _field("transfer_bytes")),
    Series("train/episode_return_mean", _field("episode_return_mean")),
)  # fmt: skip
"""The iteration record's own fields; the learner's statistics and the policy lag follow them (`iteration_scalars`)."""


def iteration_scalars(it: dict[str, Any], overlap: bool) -> Iterator[tuple[str, float]]:
    """(tag, value) of every scalar one iteration record carries."""
    for series in SERIES:
        value = series.value(it)
        if value is not None:
            yield series.tag, float(value)
    # Whatever the learner named, not a list kept here: another algorithm's statistics come through as they are.
    for name, value in it.get("learner", {}).items():
        yield f"learner/{name}", float(value)
    if overlap:
        for name, value in it["policy_lag"].items():
            if value is not None:  # a learner that does not count its optimiser steps has no lag in them
                yield f"policy_lag/{name}", float(value)


def streams(run: dict[str, Any]) -> list[Stream]:
    """One stream per case run with status ok, in run.json's order."""
    origin = dt.datetime.fromisoformat(run["created"]).timestamp()
    modes = {part["name"]: part["measure"]["mode"] for part in run["parts"]}
    out: list[Stream] = []
    used: set[str] = set()
    for case in run["cases"]:
        overlap = case["backend"].get("schedule") == "overlap"
        convergence = modes.get(case["part"]) == "convergence"
        for result in case["runs"]:
            if result.get("status") != "ok":
                continue
            which = f"seed{result['seed']}" if convergence else f"repeat{result['repeat']}"
            name = _unique("/".join(_folder_name(part) for part in case["id"].split("/")) + f"/{which}", used)
            out.append(Stream(name, tuple(_points(result, origin, overlap))))
    return out


def _points(result: dict[str, Any], origin: float, overlap: bool) -> Iterator[Point]:
    steps = 0
    for it in result["iterations"]:
        steps += it["steps"]  # this iteration's batch included: what the learner has seen by the iteration's end
        if it["warmup"]:
            continue
        for tag, value in iteration_scalars(it, overlap):
            yield Point(tag, steps, origin + it["train_wall_s"], value)
    for evaluation in result.get("evaluations", []):
        yield Point("eval/mean_return", evaluation["steps"], origin + evaluation["train_wall_s"], evaluation["mean_return"])
    if final := result.get("final_evaluation"):
        yield Point("eval/final_mean_return", final["steps"], origin + final["train_wall_s"], final["mean_return"])


def _folder_name(part: str) -> str:
    """A case id's part as one folder name: a label may hold anything a TOML string can."""
    name = re.sub(r"[^\w .,+=@()-]", "_", part).strip()
    return "_" if name in ("", ".", "..") else name


def _unique(name: str, used: set[str]) -> str:
    """`name`, or `name-2`, `name-3`, ... (a seed listed twice, two labels that clean to one folder name)."""
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}-{n}"
    used.add(candidate)
    return candidate


@dataclass(frozen=True)
class Exported:
    """What an export wrote."""

    out: Path
    streams: int
    skipped: int
    """Case runs that did not finish (status error), left out."""


def export_tensorboard(run_dir: Path, out: Path | None = None) -> Exported:
    """Write one event stream per finished case run of RUN_DIR to `out` (default RUN_DIR/tensorboard), which must
    be new or empty. The streams are written beside it first and moved into place whole, so a failed export
    leaves nothing that would block the next one."""
    run = load_run(run_dir)
    if out is None:
        out = (run_dir if run_dir.is_dir() else run_dir.parent) / DEFAULT_FOLDER
    found = streams(run)
    total = sum(len(case["runs"]) for case in run["cases"])
    if not found:
        raise HarnessError(f"{run_dir} has no finished case run ({total} run(s), none with status ok): nothing to export")
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise HarnessError(f"{out} already exists and is not an empty folder; the export never overwrites: pass another --out")
    # Imported here: torch and tensorboard load only for an export.
    from torch.utils.tensorboard import SummaryWriter

    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        staging.mkdir(parents=True)
        for stream in found:
            with SummaryWriter(str(staging / stream.name)) as writer:
                for point in stream.points:
                    writer.add_scalar(point.tag, point.value, point.step, point.wall_time)
        if out.exists():
            out.rmdir()  # empty, checked above
        staging.rename(out)
    except OSError as exc:
        raise HarnessError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone after the rename; left by a failure
    return Exported(out, len(found), total - len(found))
