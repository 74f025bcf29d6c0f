"""The run record, `run.json`, described once: TypedDicts over the dataclasses that measured it.

A record is read as plain dicts (analysis, report). Its measured parts are the dataclasses that measured
them, whose fields are the record's keys: an iteration is `harness.schedule.Iteration` (the schedule's phase
times, the backend's `BatchFigures`, `WorkerShare`s and `WorkerRestart`s), a worker's clock is
`backends.remote.ClockOffset`, an evaluation and a run's memory are `harness.case.Evaluation` and `Memory`.
The configs in it (`MeasureConfig`, `CaseConfig` and what it holds) are the suite's dataclasses themselves,
as `harness.suite.to_json` writes them. The rest (the run's header, its parts, each case run's envelope) is
written as plain dicts by `harness.results.new_run`, `harness.runner` and `harness.case`, so those parts
are TypedDicts here: `NotRequired` marks the keys only some runs carry (a dataclass lists them in its
`NOT_REQUIRED`).

From these comes `run_schema()`, their JSON Schema: `load_run` checks a record against it
(`check_record`), and `harness/run_schema.json` holds a copy, which `python -m harness.schema RUN_DIR`
checks runs against without the code. After a change here, `python -m harness.schema --write`
regenerates that file (a test compares the two).

Keys are required where the harness always writes them, and types are enforced; extra keys are allowed
everywhere, so a new field needs no new schema version. A new per-iteration figure is a field of the
dataclass that measures it, with a line saying what it measures; then regenerate the schema.
"""

import functools
import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired

import jsonschema
from annotated_types import Ge, Gt, Len, MinLen
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from pydantic import ConfigDict, Field, TypeAdapter, with_config
from pydantic.json_schema import GenerateJsonSchema
from typing_extensions import TypedDict  # pydantic needs typing_extensions' TypedDict before 3.12

from backends.base import INFERENCE_MODES
from backends.remote import ClockOffset
from harness.case import Evaluation, Memory
from harness.names import TABLE_NAMES
from harness.schedule import Iteration
from harness.suite import CaseConfig, MeasureConfig

SCHEMA_VERSION = 10
"""The version of the record's layout. `load_run` brings an older record forward to it (harness/migrations.py)
and refuses a newer one. 2: iterations time one learner phase (`train_s`) and keep the learner's
statistics as a named map (issue 8). 3: bytes are measured serialized sizes, not formulas; times are on
one clock (offsets across nodes), never clamped; each iteration keeps its per-worker times, the request
dispatch and the measured env step cost (issue 10). 4: a case's `env.options` is `env.kwargs` (issue 12).
5: env costs that vary, sampling split into env, inference and the rest (issue 21). 6: the learner's time
between iterations is on the clock (`between_s`), and policy lag is also counted in optimiser steps (issue 23).
7: a case's learner settings are `hyperparameters`, whichever learner's (they were `ppo`; issue 23). 8: the network
is `hidden_sizes` and `activation` in them (it was `hidden_size`, two tanh layers of that width; issue 23). 9: PPO's
and APPO's settings name the `kernel` that computed each minibatch step, and a case its `train_threads` (issue 24). 10:
PPO's settings name `ewma_decay`, PPO-EWMA's moving-average proximal policy, and a part's measure `quick_runs`
(issue 23)."""

# Every part of a record: extra keys allowed (a new field needs no new version); field docstrings become
# the schema's descriptions.
_record = with_config(ConfigDict(extra="allow", use_attribute_docstrings=True))

Seconds = Annotated[float, Ge(0)]
Count = Annotated[int, Ge(0)]
Positive = Annotated[int, Ge(1)]
Name = Annotated[str, MinLen(1)]
Timestamp = Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", description="ISO 8601, UTC.")]


# --- about the run as a whole ---------------------------------------------------------------------


@_record
class SuiteRecord(TypedDict):
    """The suite file the run ran."""

    name: Name
    description: str
    path: str
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    text: str
    """The suite file's text, so the run can be repeated from the record alone."""


@_record
class Gpu(TypedDict):
    name: str
    memory_mib: Count


@_record
class Machine(TypedDict):
    """harness.machine.machine_info(): cores, memory, load and GPUs, what a reader needs to judge a number."""

    hostname: str
    platform: str
    python: str
    cpu_model: str
    physical_cores: Positive | None
    """null where psutil cannot tell."""
    logical_cores: Positive | None
    usable_cpus: NotRequired[Annotated[float, Gt(0)]]
    """CPUs this run could use: the affinity mask, capped by a cgroup CPU quota. What oversubscription is
    counted against."""
    memory_gib: Annotated[float, Ge(0)]
    load_average: Annotated[list[float], Len(3, 3)]
    gpus: list[Gpu]
    torch_threads: Positive
    omp_num_threads: str | None


@_record
class Packages(TypedDict, extra_items=str | None):
    """harness.machine.package_versions(): the installed version of each package that shapes the
    numbers, null when not installed."""

    torch: str | None
    ray: str | None
    gymnasium: str | None
    numpy: str | None


@_record
class Commit(TypedDict):
    """harness.machine.commit_info(), collected without ever raising: id and dirty are null, and `error`
    says why, where git cannot tell."""

    id: Annotated[str, Field(pattern=r"^[0-9a-f]{40,64}$")] | None
    branch: NotRequired[str]
    dirty: bool | None
    error: NotRequired[str]
    changed_files: NotRequired[list[str]]
    """Tracked files with uncommitted changes (untracked files do not make a run dirty)."""


@_record
class PartRecord(TypedDict):
    """A part of the suite (harness.suite.SuitePart) without its cases, which `cases` lists."""

    name: Name
    description: str
    measure: MeasureConfig
    tables: list[Literal[TABLE_NAMES]]
    """The report tables of this part (a name the report does not know is refused at load, in one line)."""
    baseline: str | None
    """Label of the case speedups are measured against."""


# --- one run of one case: what harness.case writes, and the runner adds to ------------------------


@_record
class LearnerInfo(TypedDict):
    """Learner.describe() plus the harness's own: name, startup_s (building the learner, compile
    included), device."""

    name: str
    startup_s: Seconds
    device: NotRequired[str]


@_record
class Placement(TypedDict):
    """Where one worker runs (pid, host, Ray node, ...)."""

    worker: int
    host: NotRequired[str]
    cpus: NotRequired[Annotated[float, Gt(0)]]
    """CPUs usable on the worker's host (affinity mask, cgroup quota): oversubscription is judged per host."""
    clock: NotRequired[ClockOffset]


@_record
class BackendDescription(TypedDict):
    """Backend.describe(): the spec as the backend ran it, plus its own fields (transport, placement, nodes)."""

    backend: str
    workers: Positive
    envs_per_worker: Positive
    num_envs: Positive
    inference: Literal[INFERENCE_MODES]
    autoreset_mode: str
    options: dict[str, Any]
    placement: NotRequired[list[Placement]]
    nodes: NotRequired[list[str]]
    learner_clock: NotRequired[str]
    """time.get_clock_info("perf_counter").implementation on the learner (remote backends)."""
    remote_worker_nodes: NotRequired[Count]
    """Ray nodes other than the driver's that host workers: each fetches a weight broadcast over the network."""


@_record
class MeanMax(TypedDict):
    mean: float
    max: float


@_record
class Resources(TypedDict, extra_items=MeanMax):
    """harness.monitor.ResourceMonitor.summary(): mean and max of every sampled quantity."""

    interval_s: Annotated[float, Gt(0)]
    samples: Count
    gpu_present: bool


OK_RUN_KEYS = ("torch_threads", "startup_s", "shutdown_s", "learner", "backend", "iterations", "evaluations", "resources")
"""What a run with status `ok` always has; a run with status `error` has `error` instead."""


@with_config(
    ConfigDict(
        extra="allow",
        use_attribute_docstrings=True,
        json_schema_extra={
            "if": {"properties": {"status": {"const": "ok"}}},
            "then": {"required": list(OK_RUN_KEYS)},
            "else": {"required": ["error"]},
        },
    )
)
class RunResult(TypedDict):
    """One fresh-process run of a case. An `error` run keeps whatever iterations finished before the failure."""

    seed: int
    repeat: Count
    status: Literal["ok", "error"]
    log: str
    """The case process's stderr, relative to the run folder."""
    error: NotRequired[str]
    traceback: NotRequired[str]
    phase: NotRequired[str]
    """What the case process was doing when it failed: `setup`, `iteration N`, `closing`."""
    deterministic: NotRequired[bool]
    """The failure would recur in every run (a configuration or code error during set-up, or a hang past its
    deadline): the case's other runs were not run."""
    resumed: NotRequired[bool]
    """Run by `--resume`, after the run was first stopped."""
    torch_threads: NotRequired[Positive]
    train_threads: NotRequired[Positive]
    """The learner's threads while it trained (the case's `train_threads`; otherwise `torch_threads`)."""
    startup_s: NotRequired[Seconds]
    """Backend.start: launching workers and making their envs."""
    learner: NotRequired[LearnerInfo]
    shutdown_s: NotRequired[Seconds]
    backend: NotRequired[BackendDescription]
    iterations: NotRequired[list[Iteration]]
    worker_restarts: NotRequired[Count]
    """Workers lost and replaced in this run, all iterations (each listed in its iteration's worker_restarts)."""
    evaluations: NotRequired[list[Evaluation]]
    final_evaluation: NotRequired[Evaluation]
    resources: NotRequired[Resources]
    memory: NotRequired[Memory]


@dataclass(frozen=True, kw_only=True)
class CaseRecord(CaseConfig):
    """harness.suite.CaseConfig plus its runs, one per repeat (throughput) or seed (convergence)."""

    runs: list[RunResult]


@_record
class RunRecord(TypedDict):
    """The raw record `python -m harness run` writes (harness/results.py, harness/runner.py,
    harness/case.py). Keys are required where the harness always writes them; extra keys are allowed, so
    adding a field does not need a new schema version. Generated from harness/records.py by `python -m
    harness.schema --write`; `python -m harness.schema RUN_DIR` checks a run against it."""

    schema_version: Literal[SCHEMA_VERSION]
    """harness.records.SCHEMA_VERSION; `load_run` migrates an older record to it and refuses a newer one."""
    status: Literal["running", "complete", "interrupted"]
    """`running` while cases run (the file is rewritten after each) or if the harness itself died."""
    stopped_by: NotRequired[str]
    """The signal that stopped an `interrupted` run (SIGINT, SIGTERM, SIGHUP)."""
    resumed: NotRequired[list[Timestamp]]
    """When `--resume` went on with the run, once per resume."""
    resume_warnings: NotRequired[list[str]]
    """What differed when a resume was forced (--force): the suite or the code."""
    created: Timestamp
    finished: Timestamp | None
    """ISO 8601, UTC; null until the run ends."""
    command: list[str]
    """sys.argv of the run."""
    quick: bool
    """`--quick`: budgets shrunk, not for publishing."""
    quick_cuts: NotRequired[list[str]]
    """What `--quick` left out and shrank, one line per part of the suite (a quick run's header shows them)."""
    suite: SuiteRecord
    machine: Machine
    packages: Packages
    commit: Commit
    parts: Annotated[list[PartRecord], MinLen(1)]
    cases: list[CaseRecord]
    migrated_from: NotRequired[Annotated[int, Ge(1)]]
    """Set by `load_run` on a record whose file has an older schema version (this one), brought forward by
    harness/migrations.py; the file itself is never rewritten, so no file on disk has this key."""
    caveats: NotRequired[list[str]]
    """Of a migrated record: each figure the old version measured differently from today's, one line
    (`bytes: computed by formula in version ≤ 2, ...`), which `compare` and the report print."""
    not_recorded: NotRequired[list[str]]
    """Of a migrated record: keys today's harness always writes that the old version did not, left absent,
    as paths with `[*]` for any index (`$.cases[*].runs[*].learner.startup_s`). The check allows exactly
    these to be missing, and the report shows them as "not recorded"."""


# --- checking a record, and its JSON Schema -------------------------------------------------------

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"), (dict, "object"))


def check_record(run: Any, schema: dict[str, Any] | None = None, absent: Collection[str] = ()) -> None:
    """Check a parsed run.json against `schema` (by default the one the models generate); raise
    ValueError naming the JSON path of the first problem, on one line:
    `$.cases[0].runs[0].iterations[1].sync_s: expected number, got string`.

    `absent`: required keys that may be missing, as `field_path` patterns: a migrated record's
    `not_recorded` (what its old version never wrote)."""
    validator = _models_validator() if schema is None else Draft202012Validator(schema)
    errors = [e for e in validator.iter_errors(run) if _missing(e, absent) != []]
    if errors:
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise ValueError(_describe(best_match(errors), absent) + more)


@functools.cache
def _models_validator() -> Draft202012Validator:
    return Draft202012Validator(run_schema())


def _missing(error: jsonschema.ValidationError, absent: Collection[str]) -> list[str] | None:
    """For a `required` error, the keys missing that `absent` does not allow; None for any other error."""
    if error.validator != "required" or not isinstance(error.instance, dict):
        return None
    path = list(error.absolute_path)
    return [k for k in error.validator_value if k not in error.instance and field_path([*path, k]) not in absent]


def _describe(error: jsonschema.ValidationError, absent: Collection[str] = ()) -> str:
    """`PATH: problem` on one line, short whatever the offending value is."""
    path = list(error.absolute_path)
    kind, expected, value = error.validator, error.validator_value, error.instance
    missing = _missing(error, absent)
    if missing:
        return f"{json_path([*path, missing[0]])}: required key is missing"
    if kind == "type":
        wanted = " or ".join(expected) if isinstance(expected, list) else expected
        problem = f"expected {wanted}, got {json_type(value)}"
    elif kind == "const":
        problem = f"must be {json.dumps(expected)}, got {_short(value)}"
    elif kind == "enum":
        problem = f"must be one of {', '.join(json.dumps(v) for v in expected)}, got {_short(value)}"
    elif kind == "pattern":
        problem = f"{_short(value)} does not match {expected}"
    elif kind in ("minItems", "maxItems"):
        problem = f"has {len(value)} items, {'at least' if kind == 'minItems' else 'at most'} {expected} expected"
    else:
        problem = _short(error.message, 160)
    return f"{json_path(path)}: {problem}"


def json_path(parts: Any) -> str:
    """`$.cases[0].runs[1]` from a sequence of keys and indices."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.match(part):
            out += f".{part}"
        else:
            out += f"[{json.dumps(part)}]"
    return out


def field_path(parts: Any) -> str:
    """`$.cases[*].runs[*].learner.startup_s`: `json_path` with every index a wildcard, naming a key in
    every case, run or iteration at once."""
    return json_path(["*" if isinstance(part, int) else part for part in parts]).replace('["*"]', "[*]")


def json_type(value: Any) -> str:
    """The JSON type of a parsed value: null, boolean, integer, number, string, array or object."""
    if value is None:
        return "null"
    return next((name for cls, name in _JSON_TYPES if isinstance(value, cls)), type(value).__name__)


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) and limit > 60 else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _RecordSchema(GenerateJsonSchema):
    """The JSON Schema of a record, not of an input: every dataclass field is required (`to_json` and
    `dataclasses.asdict` write them all) but those a class names in `NOT_REQUIRED`, and shows no default;
    no per-field titles; `X | None` is `"type": [X, "null"]`."""

    def dataclass_schema(self, schema: Any) -> Any:
        json_schema = super().dataclass_schema(schema)
        optional = getattr(schema["cls"], "NOT_REQUIRED", ())
        required = [name for name in json_schema.get("required", []) if name not in optional]
        json_schema.pop("required", None)
        return {**json_schema, "required": required} if required else json_schema

    def field_is_required(self, field: Any, total: bool) -> bool:
        return super().field_is_required(field, total) if field["type"] == "typed-dict-field" else True

    def default_schema(self, schema: Any) -> Any:
        return self.generate_inner(schema["schema"])

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def nullable_schema(self, schema: Any) -> Any:
        inner = self.generate_inner(schema["schema"])
        if isinstance(inner.get("type"), str) and not {"$ref", "const", "enum"} & inner.keys():
            return {**inner, "type": [inner["type"], "null"]}
        return self.get_union_of_schemas([inner, {"type": "null"}])


def run_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of run.json, generated from `RunRecord`."""
    schema = TypeAdapter(RunRecord).json_schema(schema_generator=_RecordSchema)
    return _unwrapped(
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"urn:ppo-harness:run-schema:{SCHEMA_VERSION}",
            **schema,
            "title": f"run.json, schema version {SCHEMA_VERSION}",
        }
    )


def _unwrapped(schema: Any) -> Any:
    """Descriptions on one line each: docstrings are wrapped at the code's line length."""
    if isinstance(schema, list):
        return [_unwrapped(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: " ".join(value.split()) if key == "description" and isinstance(value, str) else _unwrapped(value)
        for key, value in schema.items()
    }
