"""`python -m harness advise`: profile the env here, model every configuration, validate the best, project.

Every input is checked before anything runs (one line, exit 2). The record is saved after each phase, so an
interrupted or failed phase never loses the ones before it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from harness.advise.model import Config, Hardware, Prediction
from harness.advise.profile import Profile, ProfileRequest, measure_profile
from harness.advise.search import MAX_ENVS, Projection, distinct_top, project, rank, search_space
from harness.advise.target import parse_target
from harness.advise.validate import Validated, estimated_seconds, recommend, run_validation, validation_suite
from harness.errors import HarnessError

ADVISE_VERSION = 1
"""Version of an advise run.json's layout (`kind = "advise"`)."""
TOP = 3
"""Configurations validated beside serial."""
REPORT_RESERVE_S = 15.0
"""Budget kept back for the projection, the report and the plot."""


@dataclass(frozen=True)
class AdviseRequest:
    env_id: str
    env_kwargs: dict[str, Any]
    preset: str
    budget_s: float
    target: Hardware | None
    backends: tuple[str, ...]
    out: Path
    max_envs: int = MAX_ENVS


def add_parser(commands: Any) -> None:
    advise = commands.add_parser("advise", help="measure an env here, recommend a setup, project it to bigger machines")
    advise.add_argument("--env", required=True, help="a gymnasium id, or your env class as module:Class")
    advise.add_argument("--kwargs", default="{}", help="the env's keyword arguments as a JSON object")
    advise.add_argument("--preset", default="report", help="PPO preset whose batch and network are used (default report)")
    advise.add_argument("--budget-minutes", type=float, default=10.0, help="the whole command's time (default 10)")
    advise.add_argument("--target", default=None,
                        help="a machine to project to: cores=64,nodes=4,bandwidth_gbps=10,latency_ms=0.2")  # fmt: skip
    advise.add_argument("--backends", default=None, help="comma-separated backends to consider (default: every available one)")
    advise.add_argument("--max-envs", type=int, default=MAX_ENVS,
                        help=f"consider at most this many envs in all (default {MAX_ENVS})")  # fmt: skip
    advise.add_argument("--out", type=Path, default=Path("results"), help="parent folder of advise-<time>/ (default results)")


def checked_request(args: argparse.Namespace) -> AdviseRequest:
    """The arguments, each checked the way a suite's are: one line naming the problem and the fix."""
    from algorithms.config import PRESETS
    from backends import REGISTRY, available
    from backends.envs import EnvError, EnvSpec, describe_env

    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as error:
        raise HarnessError(
            f"--kwargs is not JSON ({error.msg} at character {error.pos}); write e.g. --kwargs '{{\"g\": 9.81}}'"
        ) from None
    if not isinstance(kwargs, dict):
        raise HarnessError(f"--kwargs must be a JSON object of keyword arguments, got {type(kwargs).__name__}")
    if args.max_envs < 1:
        raise HarnessError(f"--max-envs must be at least 1, got {args.max_envs}")
    if args.preset not in PRESETS:
        raise HarnessError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    if not (args.budget_minutes > 0 and args.budget_minutes < 10_000):
        raise HarnessError(f"--budget-minutes must be a positive number of minutes, got {args.budget_minutes:g}")
    target = parse_target(args.target) if args.target is not None else None
    usable = tuple(name for name in REGISTRY if available(name) and not REGISTRY[name].cluster)
    if args.backends is None:
        backends = usable
    else:
        backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
        for name in backends:
            if name not in REGISTRY:
                raise HarnessError(f"--backends: unknown backend {name!r}; choose from {', '.join(usable)}")
            if name not in usable:
                why = "it runs on an existing cluster" if REGISTRY[name].cluster else "its package is not installed"
                raise HarnessError(f"--backends: {name!r} cannot be profiled here ({why}); choose from {', '.join(usable)}")
    try:
        describe_env(EnvSpec(args.env, kwargs))
    except (EnvError, ValueError) as error:
        raise HarnessError(str(error)) from None
    return AdviseRequest(args.env, kwargs, args.preset, args.budget_minutes * 60, target, backends, args.out, args.max_envs)


def run_advise(request: AdviseRequest, console: Console) -> Path:
    from algorithms.config import PRESETS
    from backends import REGISTRY
    from harness.advise.report import busy_warning, write_advise_report
    from harness.machine import busy_cores_elsewhere, commit_info, machine_info
    from harness.results import new_run_dir

    started = time.monotonic()
    deadline = started + request.budget_s
    out = new_run_dir(request.out, "advise")
    record: dict[str, Any] = {
        "kind": "advise",
        "advise_version": ADVISE_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "request": {
            "env_id": request.env_id,
            "env_kwargs": request.env_kwargs,
            "preset": request.preset,
            "budget_s": request.budget_s,
            "backends": list(request.backends),
            "max_envs": request.max_envs,
            "target": dataclasses.asdict(request.target) if request.target else None,
        },  # fmt: skip
        "machine": machine_info(),
        # Every probe and validation run shares the machine with whatever else runs on it.
        "busy_elsewhere_cores": busy_cores_elsewhere(),
        "commit": commit_info(),
        "status": "profiling",
    }
    save = _saver(out, record)
    save()
    console.print(
        f"[bold]advise[/]: {request.env_id} with the {request.preset!r} preset; budget {request.budget_s / 60:g} min -> {out}"
    )
    if warning := busy_warning(record):
        console.print(f"[yellow]{warning}[/]")
    remote = tuple(b for b in request.backends if REGISTRY[b].remote and "worker" in REGISTRY[b].inference_modes)
    central = tuple(b for b in request.backends if "central" in REGISTRY[b].inference_modes and b != "envpool")
    envpool = "envpool" in request.backends and _envpool_runs(request.env_id, request.env_kwargs)
    ppo = dataclasses.asdict(PRESETS[request.preset])
    env = {"id": request.env_id, "kwargs": request.env_kwargs}
    profile_request = ProfileRequest(env, request.preset, ppo, remote_backends=remote,
                                     central_backends=central, envpool=envpool,
                                     env_seconds=min(5.0, max(1.0, request.budget_s * 0.01)))  # fmt: skip
    record["profile_raw"] = {}
    # The probes may use what the validation, the projection and the report will not need.
    profile = measure_profile(profile_request, lambda line: console.print(f"  {line}"), record["profile_raw"],
                              deadline=deadline - REPORT_RESERVE_S)  # fmt: skip
    record["profile"] = profile.to_json()
    record["status"] = "ranking"
    save()

    here = Hardware(profile.usable_cpus)
    available_mib = _available_mib()
    ranked = rank(profile, search_space(profile, request.backends, available_mib, request.max_envs), here)
    record["predictions"] = [_prediction_json(p) for p in ranked]
    serial = next(p for p in ranked if p.config.backend == "serial")
    top = distinct_top(ranked, TOP)
    chosen = [serial, *top]  # the validation keeps this order: serial, then the model's picks, best first
    record["recommendation"] = {"label": ranked[0].config.label, "by": "model", "predicted_fps": ranked[0].fps}
    save()

    left = deadline - time.monotonic() - REPORT_RESERVE_S
    validation: dict[str, Any] = {"validated": False}
    startup = {p.config.label: _startup_guess(profile, p.config) for p in chosen}
    for repeats in (3, 2):
        needed = estimated_seconds(chosen, repeats, startup)
        if needed <= left:
            record["status"] = "validating"
            save()
            console.print(f"validating the top {len(top)} and serial ({repeats} repeats, about {needed:.0f} s)")
            suite = validation_suite(request.env_id, request.env_kwargs, request.preset, chosen, repeats)
            run_dir, results = run_validation(suite, chosen, out, console, case_timeout_s=max(60.0, left),
                                              deadline=deadline - REPORT_RESERVE_S)  # fmt: skip
            planned = len(chosen) * repeats
            finished = sum(v.runs_ok for v in results)
            validation = {"validated": True, "repeats": repeats, "run_dir": run_dir.name, "runs_planned": planned,
                          "runs_ok": finished, "results": [_validated_json(v) for v in results]}  # fmt: skip
            chosen_one, why = recommend(results)
            record["recommendation"] = {"label": chosen_one.config.label, "by": why.split(":")[0], "why": why,
                                        "predicted_fps": chosen_one.predicted_fps, "measured_fps": chosen_one.measured_fps}  # fmt: skip
            break
    else:
        needed = estimated_seconds(chosen, 2, startup)
        validation["reason"] = (f"not validated: measuring the top {len(top)} and serial needs about {needed:.0f} s and "
                                f"{max(0.0, left):.0f} s of the budget was left; rerun with a larger --budget-minutes")  # fmt: skip
    record["validation"] = validation
    record["status"] = "projecting"
    save()

    notes = []
    for key, machine in (("projection_here", here), ("projection_target", request.target)):
        if machine is None:
            continue
        try:
            record[key] = _projection_json(project(profile, machine))
        except ValueError as why:  # the worker backends it scales were left out of --backends
            notes.append(f"{key.removeprefix('projection_').replace('here', 'this machine')}: {why}")
    if notes:
        record["projection_note"] = "; ".join(notes)
    record["status"] = "complete"
    record["elapsed_s"] = time.monotonic() - started
    save()
    report = write_advise_report(out)
    _print_summary(console, record, report)
    return out


def _envpool_runs(env_id: str, kwargs: dict[str, Any]) -> bool:
    from backends import REGISTRY
    from backends.envs import EnvSpec

    try:
        REGISTRY["envpool"].check_env(EnvSpec(env_id, kwargs))
    except ValueError:
        return False
    return True


def _available_mib() -> float:
    import psutil

    return psutil.virtual_memory().available / 2**20


def _startup_guess(profile: Profile, config: Config) -> float:
    if config.backend in profile.remote and config.inference == "worker":
        return profile.remote[config.backend].startup_s.at(config.workers)
    part = profile.central.get(config.backend)
    return part.startup_s if part else 0.0


def _saver(out: Path, record: dict[str, Any]) -> Any:
    def save() -> None:
        tmp = out / "run.json.tmp"
        tmp.write_text(json.dumps(record, indent=1, default=float))
        tmp.replace(out / "run.json")

    return save


def _prediction_json(p: Prediction) -> dict[str, Any]:
    return {"config": dataclasses.asdict(p.config), "label": p.config.label, "iteration_s": p.iteration_s, "fps": p.fps,
            "terms": p.terms, "dominant": p.dominant, "assumptions": list(p.assumptions)}  # fmt: skip


def _validated_json(v: Validated) -> dict[str, Any]:
    return {"label": v.config.label, "config": dataclasses.asdict(v.config), "predicted_fps": v.predicted_fps,
            "measured_fps": v.measured_fps, "measured_low": v.measured.low if v.measured else None,
            "measured_high": v.measured.high if v.measured else None,
            "runs_ok": v.runs_ok, "error": v.error, "fps_samples": list(v.samples)}  # fmt: skip


def _projection_json(projection: Projection) -> dict[str, Any]:
    return {
        "backend": projection.backend,
        "machine": dataclasses.asdict(projection.machine),
        "rows": [
            {"workers": r.workers, "schedule": r.schedule, "speedup": r.speedup, **_prediction_json(r.prediction)}
            for r in projection.rows
        ],  # fmt: skip
        "stops_paying": projection.stops_paying,
        "assumptions": list(projection.assumptions),
    }


def _print_summary(console: Console, record: dict[str, Any], report: Path) -> None:
    chosen = record["recommendation"]
    how = (f"measured {chosen['measured_fps']:,.0f} steps/s; chosen by {chosen['why']}" if chosen.get("measured_fps")
           else "the model's best, not measured")  # fmt: skip
    console.print(f"[bold]recommended[/]: {chosen['label']}: predicted {chosen['predicted_fps']:,.0f} steps/s, {how}")
    validation = record["validation"]
    if validation["validated"]:
        for row in validation["results"]:
            measured = f"{row['measured_fps']:,.0f}" if row["measured_fps"] else "failed"
            error = f"{row['error']:+.0%}" if row["error"] is not None else "-"
            console.print(f"  {row['label']:42} predicted {row['predicted_fps']:>8,.0f}  measured {measured:>8}  error {error}")
    else:
        console.print(f"  {validation['reason']}")
    console.print(f"report:  {report}\nresults: {report.parent / 'run.json'}")


def cmd_advise(args: argparse.Namespace, console: Console) -> int:
    request = checked_request(args)
    run_advise(request, console)
    return 0
