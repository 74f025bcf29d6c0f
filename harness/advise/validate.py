"""The recommendation checked by measurement: the top configurations and the serial baseline run as an ordinary
suite (fresh processes, repeats, the runner's own records), so the measured figure is what `harness run` gives."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from harness.advise.model import Config, Prediction
from harness.stats import Estimate

WARMUP_ITERATIONS = 1
ITERATIONS = 3
"""Measured iterations per repeat."""
STARTUP_GUESS_S = {"ray_local": 8.0, "ray_cluster": 8.0}
"""Seconds a case process needs before its first iteration beyond the backend's own start-up: Python, torch and
the learner (measured here at 3-5 s), more for Ray's driver."""
PROCESS_S = 5.0


@dataclass(frozen=True)
class Validated:
    config: Config
    predicted_fps: float
    measured: Estimate | None
    """The case's FPS as the speed table gives it (geometric mean of the repeats, 95% interval); None if none ran."""
    runs_ok: int
    samples: tuple[float, ...] = ()
    """FPS of each fresh-process repeat."""

    @property
    def measured_fps(self) -> float | None:
        return self.measured.value if self.measured else None

    @property
    def error(self) -> float | None:
        """Predicted over measured, minus one."""
        return self.predicted_fps / self.measured_fps - 1 if self.measured_fps else None


def validation_suite(env_id: str, env_kwargs: dict[str, Any], preset: str, predictions: list[Prediction],
                     repeats: int) -> Any:  # fmt: skip
    """The suite that measures `predictions`' configurations: serial first, as the baseline."""
    import dataclasses

    from algorithms.config import PRESETS
    from backends.base import BackendSpec
    from backends.envs import EnvSpec
    from harness.suite import CaseConfig, MeasureConfig, Suite, SuitePart

    env = EnvSpec(env_id, dict(env_kwargs))
    cases = []
    for prediction in predictions:
        c = prediction.config
        spec = BackendSpec(c.backend, c.workers, c.envs_per_worker, c.inference, schedule=c.schedule)
        label = c.label
        case_id = f"validation/{label.replace(' ', '_')}/w{c.workers}xe{c.envs_per_worker}"
        cases.append(CaseConfig(case_id, "validation", label, spec, env, dataclasses.asdict(PRESETS[preset]), preset))
    measure = MeasureConfig(warmup_iterations=WARMUP_ITERATIONS, iterations=ITERATIONS, repeats=repeats)
    part = SuitePart("validation", "the recommended configurations and serial, measured", measure, tuple(cases),
                     ("speed", "phases"), predictions[0].config.label, tuple(c.id for c in cases))  # fmt: skip
    text = json.dumps({"env": env_id, "kwargs": env_kwargs, "preset": preset,
                       "configs": [p.config.label for p in predictions], "repeats": repeats})  # fmt: skip
    return Suite("validation", "harness advise: the top configurations and serial", "(harness advise)", text, (part,))


def estimated_seconds(predictions: list[Prediction], repeats: int, startup: dict[str, float]) -> float:
    """How long the validation should take: per run, a process, the backend's start-up and its iterations."""
    total = 0.0
    for p in predictions:
        per_run = PROCESS_S + STARTUP_GUESS_S.get(p.config.backend, 0.0) + startup.get(p.config.label, 0.0)
        total += repeats * (per_run + (WARMUP_ITERATIONS + ITERATIONS) * p.iteration_s)
    return total


def run_validation(suite: Any, predictions: list[Prediction], out: Path, console: Console, case_timeout_s: float,
                   deadline: float | None = None) -> tuple[Path, list[Validated]]:  # fmt: skip
    """Run the suite with the harness's own runner and pair each measured FPS with its prediction; by `deadline`
    (`time.monotonic()`) whatever is still running is stopped, and the rest is not run."""
    import sys

    from harness.analysis import run_stats
    from harness.report import write_report
    from harness.runner import run_suite

    run_dir, run = run_suite(suite, out, False, sys.argv, case_timeout_s, console, deadline=deadline)
    write_report(run_dir)
    by_label = {c.label: c for c in run_stats(run)["validation"]}
    results = []
    for p in predictions:
        stats = by_label.get(p.config.label)
        fps = stats["fps"] if stats is not None and stats.runs_ok else None
        samples = tuple(stats.samples("fps")) if fps else ()
        results.append(Validated(p.config, p.fps, fps, stats.runs_ok if stats is not None else 0, samples))
    return run_dir, results


SIGNIFICANCE = 0.05


def recommend(results: list[Validated]) -> tuple[Validated, str]:
    """The model's best validated configuration, unless another one measured significantly faster (Welch's test on
    log FPS at 5%, `harness.stats.compare`): then the fastest of those. Repeats on a shared machine are noisy, and
    a measured lead the repeats cannot tell from noise should not overturn the model. Returns the choice and why."""
    from harness.stats import compare

    candidates = [v for v in results if v.config.backend != "serial"] or list(results)
    model_pick = candidates[0]  # the validation measures the model's picks in its order
    if not model_pick.samples:
        measured = [v for v in candidates if v.samples]
        if not measured:
            return model_pick, "model: no configuration could be measured"
        best = max(measured, key=lambda v: v.measured_fps or 0.0)
        return best, "measurement: the model's pick failed to run"
    faster = []
    for other in candidates[1:]:
        result = compare(model_pick.samples, other.samples) if other.samples else None
        if result is not None and result.ratio.value > 1 and result.p_value is not None and result.p_value < SIGNIFICANCE:
            faster.append(other)
    if faster:
        best = max(faster, key=lambda v: v.measured_fps or 0.0)
        return best, (f"measurement: significantly faster than the model's pick, {model_pick.config.label} "
                      f"(Welch's test on log FPS, p < {SIGNIFICANCE:g})")  # fmt: skip
    return model_pick, f"model, and no configuration measured significantly faster (Welch's test on log FPS, {SIGNIFICANCE:g})"
