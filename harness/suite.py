"""Suite files: TOML read with `tomllib` into the frozen dataclasses below, which are the one
description of the format.

`SuiteFile`, `SuiteTable` and `CaseTable` describe a file's tables; `MeasureConfig` and `CaseConfig`
(with `EnvSpec`, the learner's settings, `AlgorithmSpec`, `BackendSpec` and each backend's options model)
what a part and a case are. From them pydantic derives the checks of a file (strict types: no "5"
for 5 or true for 1; unknown keys refused; each class's `__post_init__` run), the JSON round trip of
a case to its subprocess (`to_json`, `from_json`) and the run record's JSON Schema
(harness/records.py). Every mistake raises `HarnessError` in one line naming the file, the table and
key, and the valid keys or choices.

A suite has parts; a plain file is one part, and `include = [...]` in `[suite]` appends the parts of
other suite files (how `report.toml` runs all four studies).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Required, TypeVar

from annotated_types import Ge, Gt
from pydantic import AfterValidator, BeforeValidator, ConfigDict, TypeAdapter, ValidationError
from typing_extensions import TypedDict, is_typeddict  # pydantic needs typing_extensions' TypedDict before Python 3.12

from algorithms.base import AlgorithmSpec
from algorithms.config import SETTINGS_TABLES, LearnerConfig
from algorithms.policy import PolicySpec
from algorithms.registry import settings_table_name
from backends import REGISTRY
from backends.base import INFERENCE_MODES, SCHEDULES, BackendSpec, check_publish_every
from backends.envs import EnvError, EnvSpaces, EnvSpec, describe_env
from harness.errors import HarnessError
from harness.names import CLAIM_NAMES, TABLE_NAMES  # a leaf: the suite format never imports the report

Mode = Literal["throughput", "convergence"]
MODES: tuple[str, ...] = typing.get_args(Mode)

T = TypeVar("T")


def _one_or_many(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else (value,)


OneOrMany = Annotated[tuple[T, ...], BeforeValidator(_one_or_many)]
"""A value, or an array of them: `workers = 4` is `workers = [4]`."""
Positive = Annotated[int, Gt(0)]


def _publish_every(value: Any) -> str | int:
    check_publish_every(value)  # one message for every wrong value, whatever its type
    return value


@dataclass(frozen=True)
class MeasureConfig:
    """How a part measures its cases: its `[measure]` table."""

    mode: Mode = "throughput"
    """`throughput`: warm-up then measured iterations. `convergence`: train to a step budget, evaluating."""
    warmup_iterations: int = 1
    """Iterations run first and excluded from every statistic (start-up transients, JIT, caches)."""
    iterations: int = 5
    """Measured iterations per repeat (throughput mode)."""
    repeats: int = 3
    """Fresh-process repeats of each throughput case, for a confidence interval."""
    seeds: OneOrMany[int] = (0,)
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
    iteration_timeout_s: float = 0.0
    """Deadline of each iteration, evaluation and start-up, in every backend (a hung env fails the case
    instead of stalling the run); 0 scales it to the step budget (see harness/watchdog.py)."""
    quick_runs: int = 3
    """Repeats (throughput) or seeds (convergence) `--quick` keeps: 3, the fewest that give an interval
    (harness.stats.MIN_SAMPLES_FOR_INTERVAL); 1 for a part that is only a look in a quick run."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        positive = ("iterations", "repeats", "total_steps", "eval_every", "eval_episodes", "final_eval_episodes", "quick_runs")
        bad = [n for n in positive if getattr(self, n) <= 0]
        bad += [n for n in ("warmup_iterations", "torch_threads") if getattr(self, n) < 0]
        if bad:
            raise ValueError(f"out of range: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if not math.isfinite(self.iteration_timeout_s) or self.iteration_timeout_s < 0:
            raise ValueError(f"iteration_timeout_s must be a finite number of seconds >= 0, got {self.iteration_timeout_s}")

    def quick(self) -> MeasureConfig:
        """The `--quick` version: a fast look, not a measurement to publish. It keeps up to `quick_runs` repeats
        and seeds (by default three, the fewest that give an interval)."""
        return dataclasses.replace(
            self,
            warmup_iterations=min(self.warmup_iterations, 1),
            iterations=min(self.iterations, 2),
            repeats=min(self.repeats, self.quick_runs),
            seeds=self.seeds[: self.quick_runs],
            total_steps=max(self.total_steps // 10, 1),
            eval_every=max(self.eval_every // 5, 1),
            eval_episodes=min(self.eval_episodes, 3),
            final_eval_episodes=min(self.final_eval_episodes, 5),
        )


class Hyperparameters(TypedDict, total=False):
    """A learner's settings, every key of its model; the harness reads these three itself (`LearnerConfig`)."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]  # the rest are the learner's own
    steps_per_iteration: Required[Positive]
    hidden_sizes: Required[list[Positive]]
    activation: Required[str]


@dataclass(frozen=True)
class CaseConfig:
    """One cell of a sweep: a backend configuration with its env, its learner and the learner's settings."""

    id: str
    """`part/label/wWORKERSxeENVS`, unique in the suite."""
    part: str
    label: str
    """The case's name in tables: `label` of its `[[cases]]` table, or one made from its settings."""
    backend: BackendSpec
    env: EnvSpec
    hyperparameters: Hyperparameters
    """The learner's settings, every key (its settings table, `[ppo]` or `[appo]`, over the table's preset): the
    model of `algorithms.config.SETTINGS_TABLES` that `algorithm` names checks them (`learner_config`)."""
    preset: str
    """The preset of the learner's settings table the case starts from."""
    claims: dict[str, float] = field(default_factory=dict)
    """The research report's figures for this case (names from harness.names.CLAIM_NAMES), shown beside ours."""
    algorithm: AlgorithmSpec = AlgorithmSpec()
    """The learner that trains the case, and its device."""
    torch_threads: int | None = None
    """The learner's intra-op threads for this case (0: one per physical core); null: the part's `[measure]` setting."""
    train_threads: int | None = None
    """The learner's threads while it trains under `sync`, when every worker waits for it (torch's and BLAS's; 0: every
    CPU this process may use); null: `torch_threads` throughout. Sampling in the learner's process keeps `torch_threads`."""

    @property
    def steps_per_iteration(self) -> int:
        """Env steps the harness samples per iteration, summed over envs (`LearnerConfig`)."""
        return int(self.hyperparameters["steps_per_iteration"])

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        """Layer widths of the network the samplers run (`LearnerConfig`)."""
        return tuple(self.hyperparameters["hidden_sizes"])

    @property
    def activation(self) -> str:
        """The nonlinearity of the network the samplers run (`LearnerConfig`)."""
        return self.hyperparameters["activation"]

    def policy_spec(self, spaces: EnvSpaces) -> PolicySpec:
        """The network the case's learner trains and its samplers run, for the env's spaces."""
        return PolicySpec(spaces.obs_dim, spaces.act_dim, self.hidden_sizes, spaces.distribution, self.activation)

    def learner_config(self) -> LearnerConfig:
        """`hyperparameters` as the model of the learner's settings table (imports the learner's module)."""
        return SETTINGS_TABLES[settings_table_name(self.algorithm.name)].build(self.hyperparameters)


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
    quick_cases: tuple[str, ...] = ()
    """Ids of the cases `--quick` keeps (each `[[cases]]` table's `quick`, the `[suite]`'s)."""

    def quick(self) -> SuitePart:
        """What `--quick` runs of this part: its quick cases, on the quick budget."""
        kept = tuple(c for c in self.cases if c.id in self.quick_cases)
        return dataclasses.replace(self, measure=self.measure.quick(), cases=kept)

    def quick_cut(self) -> str:
        """One line saying what `--quick` leaves out of this part and what it shrinks."""
        dropped = [c.id.split("/", 1)[1] for c in self.cases if c.id not in self.quick_cases]
        if len(dropped) == len(self.cases):
            return f"{self.name}: left out"
        full, quick = self.measure, self.measure.quick()
        budget = ", ".join(
            f"{f.name} {_short(getattr(quick, f.name))} of {_short(getattr(full, f.name))}"
            for f in dataclasses.fields(MeasureConfig)
            if getattr(full, f.name) != getattr(quick, f.name) and _applies(f.name, full.mode)
        )
        cases = f"{len(self.cases) - len(dropped)} of {len(self.cases)} cases" + (
            f" (left out: {', '.join(dropped)})" if dropped else ""
        )
        return f"{self.name}: {cases}" + (f"; {budget}" if budget else "")


_THROUGHPUT_ONLY = ("warmup_iterations", "iterations", "repeats")
_CONVERGENCE_ONLY = ("seeds", "total_steps", "eval_every", "eval_episodes", "final_eval_episodes")


def _applies(name: str, mode: str) -> bool:
    return not (name in _THROUGHPUT_ONLY and mode == "convergence" or name in _CONVERGENCE_ONLY and mode == "throughput")


def _short(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return f"{value:,}" if isinstance(value, int) else str(value)


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
        """The `--quick` suite: each part's quick cases on the quick budget; parts that keep no case left out."""
        parts = tuple(p.quick() for p in self.parts if p.quick_cases)
        if not parts:
            raise HarnessError(
                f"{self.path}: --quick keeps no case (every part or case says quick = false); run it without --quick"
            )
        return dataclasses.replace(self, parts=parts)

    def quick_cuts(self) -> tuple[str, ...]:
        """What `--quick` leaves out and shrinks, one line per part (the report header says it)."""
        return tuple(p.quick_cut() for p in self.parts)


# --- the tables of a suite file --------------------------------------------------------------------

Claims = TypedDict("Claims", dict.fromkeys(CLAIM_NAMES, float), total=False)
Claims.__doc__ = "A case's `claims` table: the research report's figures, by name."


@dataclass(frozen=True)
class SuiteTable:
    """The `[suite]` table."""

    name: str | None = None
    """The suite's name in reports and folder names (default: the file's stem)."""
    description: str = ""
    tables: OneOrMany[Literal[TABLE_NAMES]] = ("speed", "phases")
    """The report's tables for this part."""
    baseline: str | None = None
    """Label of the case speedups are measured against."""
    include: OneOrMany[str] = ()
    """Suite files, next to this one, whose parts are appended to it."""
    quick: bool = True
    """Whether `--quick` runs this part at all (false: left out of a quick look)."""


class QuickSweep(TypedDict, total=False):
    """The part of a `[[cases]]` sweep that `--quick` keeps: for each key given, a subset of the table's values."""

    workers: OneOrMany[Positive]
    envs_per_worker: OneOrMany[Positive]
    inference: OneOrMany[Literal[INFERENCE_MODES]]
    schedule: OneOrMany[Literal[SCHEDULES]]
    torch_threads: OneOrMany[Annotated[int, Ge(0)]]


@dataclass(frozen=True)
class CaseTable:
    """A `[[cases]]` table: a backend and the values it is swept over (every combination of `workers`,
    `envs_per_worker`, `inference` and `schedule` is a case). Its `env`, `algorithm` and settings (`ppo`, `appo`)
    tables override the part's key by key; `options` are the backend's own (`options_model` of its registry entry)."""

    backend: Literal[tuple(REGISTRY)]
    workers: OneOrMany[Positive] = (1,)
    envs_per_worker: OneOrMany[Positive] = (1,)
    inference: OneOrMany[Literal[INFERENCE_MODES]] = ("worker",)
    schedule: OneOrMany[Literal[SCHEDULES]] = ("sync",)
    max_lag: Annotated[int, Ge(1)] = 1
    publish_every: Annotated[Any, AfterValidator(_publish_every)] = "iteration"
    """Under `overlap`: the learner also publishes weights during its update (`BackendSpec.publish_every`)."""
    torch_threads: OneOrMany[Annotated[int, Ge(0)]] = ()
    """The learner's intra-op threads, swept like `workers` (ray-project/ray#25277: torch's threads against the
    workers' cores); empty: the part's `[measure] torch_threads`."""
    train_threads: Annotated[int, Ge(0)] | None = None
    """Under `sync` only: the learner's threads while it trains and every worker waits (0: the CPUs this process may
    use), `torch_threads` again once it is done (issue 24: the cores the workers leave idle)."""
    label: str = ""
    """The case's name in tables (default: made from the backend and the settings it changes)."""
    options: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    ppo: dict[str, Any] = field(default_factory=dict)
    appo: dict[str, Any] = field(default_factory=dict)
    algorithm: dict[str, Any] = field(default_factory=dict)
    claims: Claims = field(default_factory=dict)
    quick: bool | QuickSweep = True
    """What `--quick` keeps of this table: all its cases (true), none (false), or the sub-sweep given, such as
    `{ workers = [1, 4] }` (each list a subset of the table's own)."""

    def __post_init__(self) -> None:
        # The backend's rules, from its registry entry, for every case of the sweep (its options' types: `_expand_case`).
        sweep = itertools.product(self.workers, self.envs_per_worker, self.inference, self.schedule)
        for workers, envs, mode, schedule in sweep:
            spec = BackendSpec(self.backend, workers, envs, mode, dict(self.options), schedule, self.max_lag, self.publish_every)
            REGISTRY[self.backend].check(spec)


@dataclass(frozen=True)
class SuiteFile:
    """A suite file: one part (its `[[cases]]` and the tables they share), or only `[suite] include`."""

    suite: SuiteTable = SuiteTable()
    env: dict[str, Any] = field(default_factory=dict)
    """`EnvSpec` keys every case starts from (checked once merged: see `_env`)."""
    ppo: dict[str, Any] = field(default_factory=dict)
    """`preset` and `PPOConfig` keys every PPO case starts from."""
    appo: dict[str, Any] = field(default_factory=dict)
    """`preset` and `APPOConfig` keys every APPO case starts from."""
    algorithm: dict[str, Any] = field(default_factory=dict)
    """`AlgorithmSpec` keys every case starts from."""
    measure: MeasureConfig = MeasureConfig()
    cases: tuple[CaseTable, ...] = ()


# --- the JSON round trip of a config -----------------------------------------------------------------


@functools.cache
def _adapter(model: Any) -> TypeAdapter:
    return TypeAdapter(model)


def to_json(config: Any) -> Any:
    """A suite dataclass (`CaseConfig`, `MeasureConfig`, ...) as JSON data: what run.json and a case's
    subprocess get."""
    return _adapter(type(config)).dump_python(config, mode="json")


def from_json(model: type[T], data: Any) -> T:
    """The dataclass back from `to_json`'s data; its own checks run again."""
    return _adapter(model).validate_python(data)


# --- checking a file ------------------------------------------------------------------------------

Loc = tuple[str | int, ...]
"""A key path: ('cases', 1, 'env', 'step_cost_ms') is `step_cost_ms` in the env table of the second case."""

_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "tuple_type": "an array",
    "list_type": "an array",
    "dict_type": "a table",
    "dataclass_type": "a table",
}


class _Checker:
    """Validates a file's tables against the dataclasses; every error names the file and the key path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, loc: Loc, message: str) -> typing.NoReturn:
        raise HarnessError(f"{self.path}: {_where(loc)}: {message}")

    def validate(self, model: type[T], data: Any, loc: Loc = (), also_valid: tuple[str, ...] = ()) -> T:
        """`data` (a TOML table) as a `model`: strict types, unknown keys refused, the model's own checks run."""
        try:
            # TOML's values are JSON's (dates aside: checked as the text they print as), and pydantic's strict
            # JSON mode is the strictness a config file wants: no "5" for 5 or true for 1, but arrays for
            # tuples and an integer where a float is wanted.
            return _adapter(model).validate_json(json.dumps(data, default=str), strict=True, extra="forbid")
        except ValidationError as exc:
            where, message = _explain(_first_error(exc.errors(include_url=False)), model, also_valid)
            self.fail((*loc, *where), message)


_TYPE_TAGS = re.compile(r"^(bool|int|float|str|[A-Z][A-Za-z]+)$")
"""How pydantic names the member of a union it tried (`quick = true` or a table): a type, never one of our
snake_case keys."""


def _first_error(errors: list[Any]) -> Any:
    """The error to show, without union members' names in its key path. A value checked against a union fails
    once per member; the member for the kind of value given (a table, say) explains the mistake."""

    def tagged(e: Any) -> bool:
        return e["type"].endswith("_type") and bool(e["loc"]) and _TYPE_TAGS.match(str(e["loc"][-1])) is not None

    error = next((e for e in errors if not tagged(e)), errors[0])
    loc = tuple(k for i, k in enumerate(error["loc"]) if not (isinstance(k, str) and _TYPE_TAGS.match(k) and
                                                              (i < len(error["loc"]) - 1 or tagged(error))))  # fmt: skip
    return {**error, "loc": loc}


def _explain(error: Any, model: Any, also_valid: tuple[str, ...]) -> tuple[Loc, str]:
    """One pydantic error as (the table it is in, what is wrong and how to fix it)."""
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        valid = sorted([*_keys(_hint_at(model, loc[:-1])), *(also_valid if len(loc) == 1 else ())])
        return loc[:-1], f"unknown key '{loc[-1]}'; " + (f"valid keys: {', '.join(valid)}" if valid else "it takes no keys")
    if kind == "value_error":  # a class's own check (`__post_init__`): about the table as a whole
        return loc, str(error["ctx"]["error"])
    if kind in _EXPECTED and _EXPECTED[kind] == "a table" and loc and isinstance(loc[-1], int):
        return loc, f"must be a table, got {_show(value)}"  # an item of an array of tables: [[cases]] #2
    table = loc
    while table and isinstance(table[-1], int):  # an item of an array: the key and the value name it
        table = table[:-1]
    if not table:
        return (), error["msg"]
    key, table = table[-1], table[:-1]
    if kind == "missing":
        hint = _hint_at(model, loc)
        choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else ()
        return table, f"missing '{key}'" + (f"; choose one of {', '.join(choices)}" if choices else "")
    if kind in _EXPECTED:
        problem = f"must be {_EXPECTED[kind]}"
    elif kind == "literal_error":
        problem = f"must be {error['ctx']['expected']}"
    elif kind in ("greater_than", "greater_than_equal"):
        bound = error["ctx"].get("gt", error["ctx"].get("ge"))
        problem = f"must be {'greater than' if kind == 'greater_than' else 'at least'} {bound}"
    else:
        problem = f"is refused: {error['msg'][:1].lower()}{error['msg'][1:]}"
    return table, f"'{key}' {problem}, got {_show(value)}"


def _hint_at(model: Any, path: Loc) -> Any:
    """The type a key path leads to in `model`: (SuiteFile, ('cases', 0)) -> CaseTable."""
    hint = model
    for key in path:
        hint = _unwrap(hint)
        if isinstance(key, str):
            if not (dataclasses.is_dataclass(hint) or is_typeddict(hint)):
                return None
            hint = typing.get_type_hints(hint, include_extras=True).get(key)
    return _unwrap(hint)


def _unwrap(hint: Any) -> Any:
    """Annotated[X, ...] -> X, X | None -> X, tuple[X, ...] -> X."""
    while typing.get_origin(hint) in (Annotated, typing.Union, types.UnionType, tuple):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        # `bool | QuickSweep`: the table is the member with keys to list
        hint = next((a for a in args if dataclasses.is_dataclass(a) or is_typeddict(a)), args[0])
    return hint


def _keys(hint: Any) -> list[str]:
    if dataclasses.is_dataclass(hint):
        return [f.name for f in dataclasses.fields(hint)]
    return list(hint.__annotations__) if is_typeddict(hint) else []


def _where(loc: Loc) -> str:
    """('cases', 1, 'env') -> '[[cases]] #2 env'; () -> 'top level'."""
    if not loc:
        return "top level"
    head, *rest = loc
    if head != "cases":
        return " ".join([f"[{head}]", *map(str, rest)])
    if rest and isinstance(rest[0], int):
        return " ".join([f"[[cases]] #{rest[0] + 1}", *map(str, rest[1:])])
    return " ".join(["[[cases]]", *map(str, rest)])


def _show(value: Any) -> str:
    """A value as the error shows it: Python's repr, but TOML's true and false."""
    text = str(value).lower() if isinstance(value, bool) else repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


# --- reading suites -----------------------------------------------------------------------------


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file (and the files it includes)."""
    return _load(Path(path), ())


def _load(path: Path, including: tuple[Path, ...]) -> Suite:
    text = _read(path)
    check = _Checker(path)
    data = _parse(path, text)
    file = check.validate(SuiteFile, data)
    name = path.stem if file.suite.name is None else file.suite.name
    description = file.suite.description
    parts: list[SuitePart] = []
    if file.cases:
        parts.append(_load_part(check, file, data, name, description))
    elif stray := sorted(key for key in data if key != "suite"):
        check.fail((), f"[{stray[0]}] applies to no case: a file without [[cases]] only includes others; add [[cases]]")
    chain = (*including, path.resolve())
    for included in file.suite.include:
        child = path.parent / included
        if child.resolve() in chain:
            loop = [*chain[chain.index(child.resolve()) :], child.resolve()]
            check.fail(("suite", "include"), f"include cycle: {' -> '.join(p.name for p in loop)}; remove one of these includes")
        if not child.is_file():
            check.fail(("suite", "include"), f"no suite file '{included}' next to it")
        parts.extend(_load(child, chain).parts)
    if not parts:
        check.fail(("suite",), "no [[cases]] and nothing included; add a [[cases]] table")
    names = [p.name for p in parts]
    if len(set(names)) != len(names):
        check.fail(("suite",), f"two parts share a name: {names}")
    return Suite(name, description, str(path), text, tuple(parts))


def _read(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise HarnessError(f"suite file not found: {path}; `python -m harness list` shows the suites") from None
    except OSError as exc:
        raise HarnessError(f"cannot read suite file {path}: {exc.strerror}") from None
    try:
        # TOML is UTF-8; a byte-order mark (some Windows editors write one) is skipped, not an error.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise HarnessError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); TOML files must be saved as UTF-8"
        ) from None


def _parse(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HarnessError(f"{path}: not valid TOML: {exc}") from None


def _load_part(check: _Checker, file: SuiteFile, data: dict[str, Any], name: str, description: str) -> SuitePart:
    if file.measure.mode == "convergence" and "warmup_iterations" in data.get("measure", {}):
        check.fail(
            ("measure",), "'warmup_iterations' does not apply in convergence mode (every iteration trains and counts); remove it"
        )
    base_env = _env(check, file.env, EnvSpec(), ("env",), make=False)
    base_settings = {table: _settings_base(check, getattr(file, table), table, (table,)) for table in SETTINGS_TABLES}
    base_algorithm = _algorithm(check, file.algorithm, AlgorithmSpec(), ("algorithm",))
    cases: list[CaseConfig] = []
    quick: list[str] = []
    for index, table in enumerate(file.cases):
        bases = (base_env, base_settings, base_algorithm)
        expanded = _expand_case(check, table, data["cases"][index], ("cases", index), name, *bases)
        cases.extend(expanded)
        quick.extend(c.id for c in expanded if file.suite.quick and _quick_keeps(check, table, c, ("cases", index, "quick")))
    trained = {settings_table_name(c.algorithm.name) for c in cases}
    if unused := [t for t in SETTINGS_TABLES if getattr(file, t) and t not in trained]:
        check.fail((unused[0],), f"applies to no case: every case trains a learner whose settings are "
                                 f"{' or '.join(f'[{t}]' for t in sorted(trained))}; put these keys there")  # fmt: skip
    ids = [c.id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        check.fail(("cases",), f"cases repeat: {', '.join(duplicates)}; give them distinct labels")
    baseline = file.suite.baseline
    labels = sorted({c.label for c in cases})
    if baseline is not None and baseline not in labels:
        check.fail(("suite", "baseline"), f"'{baseline}' is not a case label; labels: {', '.join(labels)}")
    kept_labels = {c.label for c in cases if c.id in quick}
    if baseline is not None and kept_labels and baseline not in kept_labels:
        check.fail(("suite", "baseline"), f"--quick would leave out the baseline '{baseline}' but keep other cases, whose "
                                          "speedups it measures; keep one of its cases in quick runs")  # fmt: skip
    return SuitePart(name, description, file.measure, tuple(cases), file.suite.tables, baseline, tuple(quick))


def _quick_keeps(check: _Checker, table: CaseTable, case: CaseConfig, loc: Loc) -> bool:
    """Whether `--quick` runs `case`, one of `table`'s; a sub-sweep that is not one is refused."""
    if isinstance(table.quick, bool):
        return table.quick
    chosen = {"workers": case.backend.workers, "envs_per_worker": case.backend.envs_per_worker,
              "inference": case.backend.inference, "schedule": case.backend.schedule,
              "torch_threads": case.torch_threads}  # fmt: skip
    keep = True
    for key, values in table.quick.items():
        swept = getattr(table, key)
        if stray := [v for v in values if v not in swept]:
            check.fail(loc, f"'{key}' {_short(tuple(stray))} is not in the table's {key} {_short(swept)}; "
                            "quick keeps a subset of the sweep")  # fmt: skip
        keep = keep and chosen[key] in values
    return keep


def _kernel_runs(check: _Checker, config: LearnerConfig, env: EnvSpec, algorithm: AlgorithmSpec, loc: Loc) -> None:
    """`kernel = "numba"` computes a Gaussian policy's step on the CPU: refused, in one line, anywhere else."""
    if getattr(config, "kernel", "torch") != "numba":
        return
    if algorithm.device != "cpu":
        check.fail(loc, f"kernel 'numba' runs on the CPU, and this case's device is '{algorithm.device}'; "
                        "use kernel 'torch' on a GPU")  # fmt: skip
    distribution = describe_env(env).distribution
    if distribution != "gaussian":
        check.fail(loc, f"kernel 'numba' runs Gaussian policies, and {env.id} has a {distribution} one; "
                        "use kernel 'torch' for discrete actions")  # fmt: skip


def _env(check: _Checker, table: dict[str, Any], base: EnvSpec, loc: Loc, make: bool = True) -> EnvSpec:
    """The env table merged over `base`; with `make`, the env is made once and its spaces checked."""
    spec = check.validate(EnvSpec, {**dataclasses.asdict(base), **table}, loc)
    if not make:  # the suite's [env]: each case's merged env is the one that runs (and is checked)
        return spec
    try:  # made once here, in the parent: an env the PPO core cannot use stops the run before anything starts
        _check_env(spec.id, json.dumps(spec.kwargs, sort_keys=True, default=repr))
    except EnvError as error:
        check.fail(loc, str(error))
    return spec


@functools.cache
def _check_env(env_id: str, kwargs_json: str) -> None:
    """`describe_env` once per env id and kwargs (the step cost changes no space)."""
    describe_env(EnvSpec(env_id, json.loads(kwargs_json)))


def _settings(
    check: _Checker, table: dict[str, Any], name: str, base: tuple[str, LearnerConfig], loc: Loc
) -> tuple[str, LearnerConfig]:
    """A learner's settings table `name` merged over `base` (a preset, and the part's keys); `preset` starts over."""
    settings = SETTINGS_TABLES[name]
    preset, config = base
    table = dict(table)
    if "preset" in table:
        preset = table.pop("preset")
        if not isinstance(preset, str) or preset not in settings.presets:
            check.fail(loc, f"unknown preset {preset!r}; choose from {', '.join(settings.presets)}")
        config = settings.presets[preset]
    merged = {**dataclasses.asdict(config), **table}
    return preset, check.validate(settings.model, merged, loc, also_valid=("preset",))


def _settings_base(check: _Checker, table: dict[str, Any], name: str, loc: Loc) -> tuple[str, LearnerConfig]:
    settings = SETTINGS_TABLES[name]
    return _settings(check, table, name, (settings.default_preset, settings.presets[settings.default_preset]), loc)


def _algorithm(check: _Checker, table: dict[str, Any], base: AlgorithmSpec, loc: Loc) -> AlgorithmSpec:
    spec = check.validate(AlgorithmSpec, {**dataclasses.asdict(base), **table}, loc)
    try:
        settings_table_name(spec.name)
    except ValueError as exc:
        check.fail(loc, str(exc))
    if spec.device == "cuda":
        import torch  # only now: a suite that asks for no GPU loads without torch

        if not torch.cuda.is_available():
            check.fail(loc, "device 'cuda' asked for, but torch sees no CUDA GPU (or is a CPU build); use 'auto' or 'cpu'")
    return spec


def _expand_case(
    check: _Checker,
    table: CaseTable,
    data: dict[str, Any],
    loc: Loc,
    part: str,
    base_env: EnvSpec,
    base_settings: dict[str, tuple[str, LearnerConfig]],
    base_algorithm: AlgorithmSpec,
) -> list[CaseConfig]:
    """Every case of one `[[cases]]` table (`data` is the table as written, for its default label)."""
    typed = check.validate(REGISTRY[table.backend].options_model, table.options, (*loc, f"options ({table.backend})"))
    options = {key: getattr(typed, key) for key in table.options}  # as given (and coerced): the record keeps these
    env_loc = (*loc, "env") if table.env else ("env",)  # where the env was set
    env = _env(check, table.env, base_env, env_loc)
    try:  # the backend's own rules on the env (EnvPool runs only its own envs)
        REGISTRY[table.backend].check_env(env)
    except ValueError as error:
        check.fail(env_loc, str(error))
    algorithm = _algorithm(check, table.algorithm, base_algorithm, (*loc, "algorithm"))
    trains = settings_table_name(algorithm.name)
    if stray := [t for t in SETTINGS_TABLES if t != trains and getattr(table, t)]:
        check.fail((*loc, stray[0]), f"this case trains '{algorithm.name}', whose settings are its [{trains}] table; "
                                     f"move these keys there")  # fmt: skip
    preset, config = _settings(check, getattr(table, trains), trains, base_settings[trains], (*loc, trains))
    label = table.label or _default_label(table.backend, data)
    cases = []
    sweep = itertools.product(
        table.workers, table.envs_per_worker, table.inference, table.schedule, table.torch_threads or (None,)
    )
    publications = _publications(check, config, table.publish_every, trains, (*loc, "publish_every"))
    _kernel_runs(check, config, env, algorithm, (*loc, trains))
    if table.train_threads is not None and "overlap" in table.schedule:
        check.fail((*loc, "train_threads"), "train_threads gives the learner the cores the workers leave idle while it "
                   "trains under sync; under overlap they sample meanwhile: leave it out, or set torch_threads")  # fmt: skip
    for n_workers, n_envs, mode, schedule, threads in sweep:
        spec = BackendSpec(table.backend, n_workers, n_envs, mode, dict(options), schedule, table.max_lag,
                           table.publish_every, publications)  # fmt: skip
        case_label = label if len(table.inference) == 1 or "label" in data else f"{label}/{mode}"
        if schedule == "overlap" and (len(table.schedule) > 1 or "label" not in data):
            case_label += " overlap" + (f" lag {table.max_lag}" if table.max_lag > 1 else "")
            case_label += f" publish {table.publish_every}" if table.publish_every != "iteration" else ""
        if threads is not None and (len(table.torch_threads) > 1 or "label" not in data):
            case_label += f" torch {threads or 'cores'}"
        if table.train_threads is not None and "label" not in data:
            case_label += f" train {table.train_threads or 'cores'}"
        case_id = f"{part}/{case_label}/w{n_workers}xe{n_envs}"
        if config.steps_per_iteration % spec.num_envs:
            check.fail(loc, f"case {case_id}: steps_per_iteration {config.steps_per_iteration} does not split over "
                            f"{spec.num_envs} envs; choose envs that divide it")  # fmt: skip
        if publications > config.steps_per_iteration // spec.num_envs:
            check.fail((*loc, "publish_every"), f"case {case_id}: {publications} publications per update, more than the "
                       f"{config.steps_per_iteration // spec.num_envs} steps per env of a batch; publish less often")  # fmt: skip
        # As run.json holds them (a layer list is a list), so that a case and its record compare equal.
        hyperparameters = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
        cases.append(
            CaseConfig(
                case_id,
                part,
                case_label,
                spec,
                env,
                hyperparameters,
                preset,
                dict(table.claims),
                algorithm,
                threads,
                table.train_threads,
            )  # fmt: skip
        )
    return cases


def _publications(check: _Checker, config: LearnerConfig, publish_every: str | int, table: str, loc: Loc) -> int:
    """How many weight versions one update of the learner publishes at `publish_every` (1: once, at its end)."""
    if publish_every == "iteration":
        return 1
    publications = getattr(config, "publications", None)
    if publications is None:
        check.fail(loc, f"the learner whose settings are [{table}] cannot publish during its update (its settings count "
                        f"no epochs or optimiser steps); leave publish_every out")  # fmt: skip
    return publications(publish_every)


def _default_label(backend: str, data: dict[str, Any]) -> str:
    label = backend
    if data.get("inference", "worker") == "central":
        label += "/central"
    label += "".join(f" {data[t]['preset']}" for t in SETTINGS_TABLES if "preset" in data.get(t, {}))
    env = data.get("env", {})
    if env.get("step_cost_ms"):
        label += f" +{env['step_cost_ms']}ms {env.get('step_cost_kind', 'sleep')}"
        if env.get("step_cost_distribution", "constant") != "constant":
            label += f" {env['step_cost_distribution']} cv{env.get('step_cost_cv', 0)}"
        if env.get("slow_env_fraction"):
            label += f" {env['slow_env_fraction']:g} x{env.get('slow_env_factor', 1):g}"
    if env.get("reset_cost_ms"):
        label += f" reset {env['reset_cost_ms']}ms"
    algorithm = data.get("algorithm", {})
    label += "".join(f" {algorithm[key]}" for key in ("name", "device") if key in algorithm)
    return label
