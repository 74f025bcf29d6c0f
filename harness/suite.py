"""Suite files: TOML read with `tomllib` into frozen dataclasses, checked in one place.

A suite has parts; a plain file is one part, and `include = [...]` in `[suite]`
appends the parts of other suite files (how `report.toml` runs all four studies).
Every mistake raises `HarnessError` naming the file, the key and the valid choices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from algorithms.base import AlgorithmSpec
from algorithms.config import PRESETS, PPOConfig
from algorithms.registry import learner_class
from backends import REGISTRY
from backends.base import SCHEDULES, BackendSpec
from backends.envs import STEP_COST_KINDS, EnvSpec, registered_env_ids
from harness.errors import HarnessError

TABLES = ("speed", "phases", "convergence", "scaling", "communication", "overlap")
# What a case may record as the research report's own figure, to be checked against ours.
CLAIMS = ("fps", "speedup", "steps_to_threshold", "final_return", "communication_share")
MODES = ("throughput", "convergence")


@dataclass(frozen=True)
class MeasureConfig:
    """How a part measures its cases."""

    mode: str = "throughput"
    """`throughput`: warm-up then measured iterations. `convergence`: train to a step budget, evaluating."""
    warmup_iterations: int = 1
    """Iterations run first and excluded from every statistic (start-up transients, JIT, caches)."""
    iterations: int = 5
    """Measured iterations per repeat (throughput mode)."""
    repeats: int = 3
    """Fresh-process repeats of each throughput case, for a confidence interval."""
    seeds: tuple[int, ...] = (0,)
    """Training seeds; convergence runs one training per seed."""
    total_steps: int = 150_000
    """Env-step budget per training run (convergence mode)."""
    eval_every: int = 10_000
    """Env steps between deterministic evaluations (convergence mode)."""
    eval_episodes: int = 10
    """Episodes per periodic evaluation."""
    final_eval_episodes: int = 20
    """Episodes of the final evaluation."""
    threshold: float = -200.0
    """Mean evaluation return that counts as solved."""
    torch_threads: int = 1
    """Learner intra-op threads; 0 means one per physical core. Default 1: with workers busy on the
    other cores, OpenMP threads spin-wait on each other and small-batch ops run 10x slower."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        positive = ("iterations", "repeats", "total_steps", "eval_every", "eval_episodes", "final_eval_episodes")
        bad = [n for n in positive if getattr(self, n) <= 0]
        bad += [n for n in ("warmup_iterations", "torch_threads") if getattr(self, n) < 0]
        if bad:
            raise ValueError(f"out of range: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")

    def quick(self) -> MeasureConfig:
        """The `--quick` version: a fast look, not a measurement to publish."""
        return dataclasses.replace(
            self,
            warmup_iterations=min(self.warmup_iterations, 1),
            iterations=min(self.iterations, 2),
            repeats=1,
            seeds=self.seeds[:2],
            total_steps=max(self.total_steps // 10, 1),
            eval_every=max(self.eval_every // 5, 1),
            eval_episodes=min(self.eval_episodes, 3),
            final_eval_episodes=min(self.final_eval_episodes, 5),
        )


@dataclass(frozen=True)
class CaseConfig:
    """One cell of a sweep: a backend configuration with its env and PPO settings."""

    id: str
    part: str
    label: str
    backend: BackendSpec
    env: EnvSpec
    ppo: PPOConfig
    preset: str
    claims: dict[str, float] = dataclasses.field(default_factory=dict)
    """The research report's figures for this case (keys from CLAIMS), shown beside ours."""
    algorithm: AlgorithmSpec = AlgorithmSpec()
    """The learner that trains the case, and its device."""


@dataclass(frozen=True)
class SuitePart:
    """One study: its measurement settings, cases, tables and baseline."""

    name: str
    description: str
    measure: MeasureConfig
    cases: tuple[CaseConfig, ...]
    tables: tuple[str, ...]
    baseline: str | None
    """Label of the case speedups are measured against (its smallest worker count)."""


@dataclass(frozen=True)
class Suite:
    """A parsed suite file, with its text kept for the results."""

    name: str
    description: str
    path: str
    text: str
    parts: tuple[SuitePart, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def cases(self) -> tuple[CaseConfig, ...]:
        return tuple(c for p in self.parts for c in p.cases)

    def quick(self) -> Suite:
        return dataclasses.replace(self, parts=tuple(dataclasses.replace(p, measure=p.measure.quick()) for p in self.parts))


# --- checking tables -----------------------------------------------------------------------------


class _Checker:
    """Checks keys and types of TOML tables, naming the file in every error."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, message: str) -> typing.NoReturn:
        raise HarnessError(f"{self.path}: {where}: {message}")

    def table(self, data: Any, where: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.fail(where, f"must be a table, got {type(data).__name__}")
        return data

    def known_keys(self, data: dict[str, Any], valid: typing.Iterable[str], where: str) -> None:
        valid = sorted(valid)
        for key in data:
            if key not in valid:
                self.fail(where, f"unknown key '{key}'; valid keys: {', '.join(valid)}")

    def value(self, value: Any, expected: Any, where: str, key: str) -> Any:
        """Check `value` against a type hint (int, float, str, bool, tuple[int, ...])."""
        origin = typing.get_origin(expected)
        if origin is tuple:
            items = value if isinstance(value, list) else [value]
            return tuple(self.value(v, typing.get_args(expected)[0], where, key) for v in items)
        if origin in (typing.Union, types.UnionType):
            expected = next(t for t in typing.get_args(expected) if t is not type(None))
        if origin is dict:
            expected = dict
        ok = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, int | float) and not isinstance(value, bool),
            str: isinstance(value, str),
            dict: isinstance(value, dict),
        }.get(expected, True)
        if not ok:
            self.fail(where, f"'{key}' must be {getattr(expected, '__name__', expected)}, got {value!r}")
        return float(value) if expected is float else value

    def dataclass_fields(self, cls: type, data: dict[str, Any], where: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
        self.known_keys(data, names, where)
        return {k: self.value(v, hints[k], where, k) for k, v in data.items()}

    def build(self, cls: type, kwargs: dict[str, Any], where: str) -> Any:
        try:
            return cls(**kwargs)
        except ValueError as exc:
            self.fail(where, str(exc))


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- reading suites -----------------------------------------------------------------------------

TOP_KEYS = ("suite", "env", "ppo", "algorithm", "measure", "cases")
SUITE_KEYS = ("name", "description", "tables", "baseline", "include")
CASE_KEYS = ("backend", "workers", "envs_per_worker", "inference", "schedule", "max_lag", "label", "options", "env", "ppo",
             "algorithm", "claims")  # fmt: skip


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file (and the files it includes)."""
    path = Path(path)
    text = _read(path)
    check = _Checker(path)
    data = _parse(path, text)
    meta = check.table(data.get("suite", {}), "[suite]")
    check.known_keys(meta, SUITE_KEYS, "[suite]")
    name = check.value(meta.get("name", path.stem), str, "[suite]", "name")
    description = check.value(meta.get("description", ""), str, "[suite]", "description")
    parts: list[SuitePart] = []
    if "cases" in data:
        parts.append(_load_part(check, data, name, description))
    else:
        check.known_keys(
            {k: v for k, v in data.items() if k != "suite"}, (), "top level (a suite without [[cases]] only includes)"
        )
    for included in check.value(meta.get("include", []), tuple[str, ...], "[suite]", "include"):
        child_path = path.parent / included
        if not child_path.is_file():
            check.fail("[suite] include", f"no suite file '{included}' next to it")
        parts.extend(load_suite(child_path).parts)
    if not parts:
        check.fail("[suite]", "no [[cases]] and nothing included; add a [[cases]] table")
    names = [p.name for p in parts]
    if len(set(names)) != len(names):
        check.fail("[suite]", f"two parts share a name: {names}")
    return Suite(name, description, str(path), text, tuple(parts))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise HarnessError(f"suite file not found: {path}; `python -m harness list` shows the suites") from None
    except OSError as exc:
        raise HarnessError(f"cannot read suite file {path}: {exc.strerror}") from None


def _parse(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HarnessError(f"{path}: not valid TOML: {exc}") from None


def _load_part(check: _Checker, data: dict[str, Any], name: str, description: str) -> SuitePart:
    check.known_keys(data, TOP_KEYS, "top level")
    meta = data.get("suite", {})
    tables = check.value(meta.get("tables", ["speed", "phases"]), tuple[str, ...], "[suite]", "tables")
    for table in tables:
        if table not in TABLES:
            check.fail("[suite] tables", f"unknown table '{table}'; choose from {', '.join(TABLES)}")
    base_env = _env(check, check.table(data.get("env", {}), "[env]"), EnvSpec(), "[env]")
    preset, base_ppo = _ppo(check, check.table(data.get("ppo", {}), "[ppo]"), "report", PRESETS["report"], "[ppo]")
    base_algorithm = _algorithm(check, check.table(data.get("algorithm", {}), "[algorithm]"), AlgorithmSpec(), "[algorithm]")
    measure_data = check.dataclass_fields(MeasureConfig, check.table(data.get("measure", {}), "[measure]"), "[measure]")
    measure = check.build(MeasureConfig, measure_data, "[measure]")
    if measure.mode == "convergence" and "warmup_iterations" in measure_data:
        check.fail(
            "[measure]", "'warmup_iterations' does not apply in convergence mode (every iteration trains and counts); remove it"
        )
    cases_data = data["cases"]
    if not isinstance(cases_data, list) or not cases_data:
        check.fail("[[cases]]", "must be an array of tables with at least one case")
    cases: list[CaseConfig] = []
    for index, case in enumerate(cases_data, start=1):
        bases = (base_env, preset, base_ppo, base_algorithm)
        cases.extend(_expand_case(check, check.table(case, f"[[cases]] #{index}"), index, name, *bases))
    ids = [c.id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        check.fail("[[cases]]", f"cases repeat: {', '.join(duplicates)}; give them distinct labels")
    baseline = meta.get("baseline")
    if baseline is not None:
        baseline = check.value(baseline, str, "[suite]", "baseline")
        labels = sorted({c.label for c in cases})
        if baseline not in labels:
            check.fail("[suite] baseline", f"'{baseline}' is not a case label; labels: {', '.join(labels)}")
    for case in cases:
        if case.ppo.steps_per_iteration % case.backend.num_envs:
            check.fail(
                f"case {case.id}",
                f"steps_per_iteration {case.ppo.steps_per_iteration} does not split over {case.backend.num_envs} envs; "
                "choose envs that divide it",
            )
    return SuitePart(name, description, measure, tuple(cases), tables, baseline)


def _env(check: _Checker, data: dict[str, Any], base: EnvSpec, where: str) -> EnvSpec:
    fields = check.dataclass_fields(EnvSpec, data, where)
    spec = check.build(EnvSpec, {**dataclasses.asdict(base), **fields}, where)
    if spec.id not in registered_env_ids():
        check.fail(where, f"'{spec.id}' is not a registered gymnasium env id (e.g. Pendulum-v1)")
    if spec.step_cost_kind not in STEP_COST_KINDS:  # pragma: no cover - EnvSpec checks too
        check.fail(where, f"step_cost_kind must be one of {', '.join(STEP_COST_KINDS)}")
    return spec


def _ppo(check: _Checker, data: dict[str, Any], preset: str, base: PPOConfig, where: str) -> tuple[str, PPOConfig]:
    data = dict(data)
    if "preset" in data:
        preset = check.value(data.pop("preset"), str, where, "preset")
        if preset not in PRESETS:
            check.fail(where, f"unknown preset '{preset}'; choose from {', '.join(PRESETS)}")
        base = PRESETS[preset]
    hints = typing.get_type_hints(PPOConfig)
    check.known_keys(data, ["preset", *hints], where)
    overrides = {k: check.value(v, hints[k], where, k) for k, v in data.items()}
    return preset, check.build(PPOConfig, {**dataclasses.asdict(base), **overrides}, where)


def _algorithm(check: _Checker, data: dict[str, Any], base: AlgorithmSpec, where: str) -> AlgorithmSpec:
    fields = check.dataclass_fields(AlgorithmSpec, data, where)
    spec = check.build(AlgorithmSpec, {**dataclasses.asdict(base), **fields}, where)
    try:
        learner_class(spec.name)
    except ValueError as exc:
        check.fail(where, str(exc))
    if spec.device == "cuda":
        import torch  # only now: a suite that asks for no GPU loads without torch

        if not torch.cuda.is_available():
            check.fail(where, "device 'cuda' asked for, but torch sees no CUDA GPU (or is a CPU build); use 'auto' or 'cpu'")
    return spec


def _expand_case(
    check: _Checker,
    data: dict[str, Any],
    index: int,
    part: str,
    base_env: EnvSpec,
    base_preset: str,
    base_ppo: PPOConfig,
    base_algorithm: AlgorithmSpec,
) -> list[CaseConfig]:
    where = f"[[cases]] #{index}"
    check.known_keys(data, CASE_KEYS, where)
    if "backend" not in data:
        check.fail(where, f"missing 'backend'; choose one of {', '.join(REGISTRY)}")
    backend = check.value(data["backend"], str, where, "backend")
    if backend not in REGISTRY:
        check.fail(where, f"unknown backend '{backend}'; choose one of {', '.join(REGISTRY)}")
    entry = REGISTRY[backend]
    workers = check.value(data.get("workers", 1), tuple[int, ...], where, "workers")
    envs = check.value(data.get("envs_per_worker", 1), tuple[int, ...], where, "envs_per_worker")
    modes = check.value(data.get("inference", "worker"), tuple[str, ...], where, "inference")
    if any(n <= 0 for n in workers + envs):
        check.fail(where, "'workers' and 'envs_per_worker' must be positive")
    for mode in modes:
        if mode not in entry.inference_modes:
            check.fail(where, f"backend '{backend}' has no inference mode '{mode}'; choose {', '.join(entry.inference_modes)}")
    schedules = check.value(data.get("schedule", "sync"), tuple[str, ...], where, "schedule")
    max_lag = check.value(data.get("max_lag", 1), int, where, "max_lag")
    if max_lag < 1:
        check.fail(where, f"'max_lag' must be at least 1, got {max_lag}")
    for schedule in schedules:
        if schedule not in SCHEDULES:
            check.fail(where, f"unknown schedule '{schedule}'; choose {', '.join(SCHEDULES)}")
        if schedule not in entry.schedules:
            able = [name for name, e in REGISTRY.items() if schedule in e.schedules]
            check.fail(where, f"backend '{backend}' cannot overlap sampling with training (it samples in the learner's "
                              f"process); use one of {', '.join(able)}")  # fmt: skip
        if schedule == "overlap" and "central" in modes:
            check.fail(
                where, "schedule 'overlap' needs inference = \"worker\": with central inference the learner does the sampling"
            )
    if not entry.multi_worker and workers != (1,):
        check.fail(where, f"backend '{backend}' runs in one process: set workers = 1 and sweep 'envs_per_worker' instead")
    options = check.table(data.get("options", {}), f"{where} options")
    check.known_keys(options, entry.options, f"{where} options for '{backend}'")
    env = _env(check, check.table(data.get("env", {}), f"{where} env"), base_env, f"{where} env")
    preset, ppo = _ppo(check, check.table(data.get("ppo", {}), f"{where} ppo"), base_preset, base_ppo, f"{where} ppo")
    algorithm = _algorithm(
        check, check.table(data.get("algorithm", {}), f"{where} algorithm"), base_algorithm, f"{where} algorithm"
    )
    claims = check.table(data.get("claims", {}), f"{where} claims")
    check.known_keys(claims, CLAIMS, f"{where} claims")
    claims = {k: check.value(v, float, f"{where} claims", k) for k, v in claims.items()}
    label = data.get("label") or _default_label(backend, data)
    label = check.value(label, str, where, "label")
    cases = []
    for n_workers, n_envs, mode, schedule in itertools.product(workers, envs, modes, schedules):
        spec = BackendSpec(backend, n_workers, n_envs, mode, dict(options), schedule, max_lag)
        case_label = label if len(modes) == 1 or "label" in data else f"{label}/{mode}"
        if schedule == "overlap" and (len(schedules) > 1 or "label" not in data):
            case_label += " overlap" + (f" lag {max_lag}" if max_lag > 1 else "")
        case_id = f"{part}/{case_label}/w{n_workers}xe{n_envs}"
        cases.append(CaseConfig(case_id, part, case_label, spec, env, ppo, preset, dict(claims), algorithm))
    return cases


def _default_label(backend: str, data: dict[str, Any]) -> str:
    label = backend
    if data.get("inference", "worker") == "central":
        label += "/central"
    if isinstance(data.get("ppo"), dict) and "preset" in data["ppo"]:
        label += f" {data['ppo']['preset']}"
    env = data.get("env")
    if isinstance(env, dict) and env.get("step_cost_ms"):
        label += f" +{env['step_cost_ms']}ms {env.get('step_cost_kind', 'sleep')}"
    algorithm = data.get("algorithm")
    if isinstance(algorithm, dict):
        label += "".join(f" {algorithm[key]}" for key in ("name", "device") if key in algorithm)
    return label
