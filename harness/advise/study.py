"""The cost model checked against what this project measures: `python -m harness.advise.study RUN_DIR ...`.

For every measured case of the given suite runs (`suites/advise-check.toml` is the committed one: the main
job's scaling sweep, cheap and with a 1 ms sleeping env, and a 0.5 ms busy env across the tools), it profiles
the case's env and preset here (once per distinct env and preset, each probe in a fresh process), predicts the
case from that profile alone, and sets the prediction beside the measured FPS. Then it gives the model 16 cores
and compares its speedups over serial with the figures measured on a 16-core host (`SIXTEEN_CORE`).

The profile never sees the measured cells: the model's parameters come from the probes only.
Writes `study.md` and `study.json` to `--out` (default: the first run's folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from tabulate import tabulate

from algorithms.registry import DEFAULT_ALGORITHM
from harness.advise.model import Config, Hardware, predict
from harness.advise.profile import Profile, ProfileRequest, measure_profile
from harness.errors import HarnessError


@dataclass(frozen=True)
class Reference:
    """Figures measured elsewhere, with where they come from."""

    source: str
    cores: float
    env: dict[str, Any]
    preset: str
    fps: dict[Config, float]
    serial: float


# Measured on a lent 16-core host (an H200 machine's Xeon) with `suites/overlap-multiprocessing.toml` (report
# preset, +1 ms sleep per step, 3 repeats x 3 iterations), as quoted in the README's "Overlapped sampling" section
# and issue 14's closing note: 8 workers sync 3,015 and overlap 4,948 steps/s, 16 workers overlap 6,860 = 11.4x
# serial, sync 5.96x serial. Serial's FPS is not quoted; it is 6,860 / 11.4. Its workers still ran torch inference
# (issue 13 came later): about 50 us more per step than today's numpy policy, 5% of a 1 ms step.
SIXTEEN_CORE = Reference(
    source="16-core host, suites/overlap-multiprocessing.toml (README, Overlapped sampling)",
    cores=16,
    env={"id": "Pendulum-v1", "kwargs": {}, "step_cost_ms": 1.0, "step_cost_kind": "sleep"},
    preset="report",
    fps={
        Config("multiprocessing", 8, 1, "worker", "sync"): 3015.0,
        Config("multiprocessing", 8, 1, "worker", "overlap"): 4948.0,
        Config("multiprocessing", 16, 1, "worker", "sync"): 5.96 * 6860 / 11.4,
        Config("multiprocessing", 16, 1, "worker", "overlap"): 6860.0,
    },
    serial=6860 / 11.4,
)


@dataclass(frozen=True)
class Cell:
    source: str
    case: str
    config: Config
    predicted: float
    measured: float
    oversubscribed: bool
    dominant: str

    @property
    def error(self) -> float:
        """Predicted over measured, minus one."""
        return self.predicted / self.measured - 1


def _profile_key(env: dict[str, Any], settings: dict[str, Any], algorithm: str = DEFAULT_ALGORITHM) -> str:
    key = [env, settings] if algorithm == DEFAULT_ALGORITHM else [env, settings, algorithm]  # earlier studies' files
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


class Profiles:
    """Profiles by env and learner settings: read from `folder` if an earlier study measured them, else measured now."""

    def __init__(self, folder: Path, console: Console) -> None:
        self.folder, self.console = folder, console
        folder.mkdir(parents=True, exist_ok=True)

    def get(self, env: dict[str, Any], ppo: dict[str, Any], preset: str, algorithm: str = DEFAULT_ALGORITHM) -> Profile:
        path = self.folder / f"profile-{_profile_key(env, ppo, algorithm)}.json"
        if path.exists():
            return Profile.from_json(json.loads(path.read_text()))
        self.console.print(f"profiling {env['id']} (cost {env.get('step_cost_ms', 0)} ms {env.get('step_cost_kind', '')}), "
                           f"{ppo['steps_per_iteration']} steps per iteration")  # fmt: skip
        request = ProfileRequest(env, preset, ppo, algorithm, envpool=False)
        profile = measure_profile(request, lambda line: self.console.print(f"  {line}"), {})
        path.write_text(json.dumps(profile.to_json()))
        return profile


def measured_cells(run_dir: Path, profiles: Profiles) -> list[Cell]:
    from harness.analysis import run_stats
    from harness.results import load_run

    run = load_run(run_dir)
    cpus = run["machine"].get("usable_cpus") or run["machine"]["logical_cores"]
    records = {c["id"]: c for c in run["cases"]}
    cells = []
    for cases in run_stats(run).values():
        for stats in cases:
            fps = stats["fps"]
            if fps is None or not stats.runs_ok:
                continue
            record = records[stats.id]
            backend = record["backend"]
            config = Config(backend["name"], backend["workers"], backend["envs_per_worker"], backend["inference"],
                            backend["schedule"])  # fmt: skip
            profile = profiles.get(record["env"], record["hyperparameters"], record["preset"], record["algorithm"]["name"])
            prediction = predict(profile, config, Hardware(cpus))
            cells.append(Cell(run_dir.name, stats.id, config, prediction.fps, fps.value, stats.oversubscribed,
                              prediction.dominant))  # fmt: skip
    return cells


def reference_cells(reference: Reference, profiles: Profiles) -> list[Cell]:
    """Speedups over serial, predicted with the reference's cores, against the reference's."""
    from algorithms.config import PRESETS

    ppo = dataclasses.asdict(PRESETS[reference.preset])
    env = {**dataclasses.asdict(_env_spec(reference.env))}
    profile = profiles.get(env, ppo, reference.preset)
    machine = Hardware(reference.cores)
    serial = predict(profile, Config("serial"), machine).fps
    cells = []
    for config, fps in reference.fps.items():
        prediction = predict(profile, config, machine)
        cells.append(Cell(reference.source, config.label, config, prediction.fps / serial, fps / reference.serial, False,
                          prediction.dominant))  # fmt: skip
    return cells


def _env_spec(env: dict[str, Any]) -> Any:
    from backends.envs import EnvSpec

    return EnvSpec(**env)


def summary(cells: list[Cell]) -> dict[str, float]:
    errors = [abs(c.error) for c in cells]
    return {"cells": len(cells), "median_abs_error": statistics.median(errors), "worst_abs_error": max(errors)}


def render(measured: list[Cell], reference: list[Cell]) -> list[str]:
    lines = ["# The cost model against measurements", "",
             "Each prediction comes from a profile of the case's env and preset measured by `harness advise`'s probes, "
             "never from the measured cells. Error = predicted / measured − 1.", ""]  # fmt: skip
    if measured:
        s = summary(measured)
        lines += [
            f"## This machine: {s['cells']} cells, median |error| {s['median_abs_error']:.1%}, worst {s['worst_abs_error']:.1%}",
            "",
        ]
        rows = [[c.case, c.config.label, f"{c.predicted:,.0f}", f"{c.measured:,.0f}", f"{c.error:+.1%}",
                 "⚠" if c.oversubscribed else "", c.dominant] for c in measured]  # fmt: skip
        lines.append(tabulate(rows, ["case", "configuration", "predicted steps/s", "measured steps/s (geometric mean)",
                                     "error", "oversubscribed", "dominant term"], tablefmt="github", disable_numparse=True))  # fmt: skip
    if reference:
        s = summary(reference)
        lines += ["", f"## {reference[0].source}: speedup over serial, the model given 16 cores", "",
                  f"{s['cells']} cells, median |error| {s['median_abs_error']:.1%}, worst {s['worst_abs_error']:.1%}", ""]  # fmt: skip
        rows = [[c.config.label, f"{c.predicted:.2f}x", f"{c.measured:.2f}x", f"{c.error:+.1%}", c.dominant] for c in reference]
        lines.append(tabulate(rows, ["configuration", "predicted speedup", "measured speedup", "error", "dominant term"],
                              tablefmt="github", disable_numparse=True))  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.advise.study", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+", help="suite runs to check the model against")
    parser.add_argument("--out", type=Path, default=None, help="where study.md, study.json and profiles/ go")
    parser.add_argument("--no-reference", action="store_true", help="leave out the 16-core host's figures")
    args = parser.parse_args(argv)
    console = Console(soft_wrap=True)
    try:
        out = args.out or args.run_dirs[0]
        profiles = Profiles(out / "profiles", console)
        measured = [cell for run_dir in args.run_dirs for cell in measured_cells(run_dir, profiles)]
        reference = [] if args.no_reference else reference_cells(SIXTEEN_CORE, profiles)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    lines = render(measured, reference)
    (out / "study.md").write_text("\n".join(lines) + "\n")
    data = {"measured": [_cell_json(c) for c in measured], "reference": [_cell_json(c) for c in reference],
            "summary": {"measured": summary(measured) if measured else None,
                        "reference": summary(reference) if reference else None}}  # fmt: skip
    (out / "study.json").write_text(json.dumps(data, indent=1))
    console.print("\n".join(lines))
    return 0


def _cell_json(cell: Cell) -> dict[str, Any]:
    return {"source": cell.source, "case": cell.case, "config": dataclasses.asdict(cell.config), "predicted": cell.predicted,
            "measured": cell.measured, "error": cell.error, "oversubscribed": cell.oversubscribed, "dominant": cell.dominant}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
