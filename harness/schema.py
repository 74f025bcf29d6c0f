"""Checks a run.json against `harness/run_schema.json` (JSON Schema draft 2020-12).

`python -m harness.schema RUN_DIR...` exits 0 when every run matches, and 2 with
one line per failing run that names the file and the JSON path of the first
problem, e.g. `error: results/x/run.json: $.cases[0].runs[0].iterations[1].sync_s: expected number, got string`.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from harness.errors import HarnessError
from harness.results import RUN_FILE, read_run_json

SCHEMA_PATH = Path(__file__).with_name("run_schema.json")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"), (dict, "object"))


@functools.cache
def load_schema() -> dict[str, Any]:
    """The run.json schema, read once."""
    return json.loads(SCHEMA_PATH.read_text())


def validate_run(path: str | Path) -> None:
    """Check a run folder (or its run.json) against the schema; raise `HarnessError` with one line if it does not match."""
    run, file = read_run_json(path)
    validate_record(run, str(file))


def validate_record(run: Any, source: str = RUN_FILE) -> None:
    """Check an already-loaded run record; `source` names it in the error message."""
    errors = list(Draft202012Validator(load_schema()).iter_errors(run))
    if not errors:
        return
    error = best_match(errors)
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    raise HarnessError(f"{source}: {_describe(error)}{more}")


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


def _describe(error: ValidationError) -> str:
    """`PATH: problem` on one line, short whatever the offending value is."""
    path = list(error.absolute_path)
    kind, expected, value = error.validator, error.validator_value, error.instance
    if kind == "required" and isinstance(value, dict):
        missing = [key for key in expected if key not in value]
        return f"{json_path([*path, missing[0]])}: required key is missing"
    if kind == "type":
        wanted = " or ".join(expected) if isinstance(expected, list) else expected
        problem = f"expected {wanted}, got {_type_name(value)}"
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


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return next((name for cls, name in _JSON_TYPES if isinstance(value, cls)), type(value).__name__)


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) and limit > 60 else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.schema", description="Check run.json files against harness/run_schema.json."
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="a run folder or its run.json")
    args = parser.parse_args(argv)
    status = 0
    for run in args.runs:
        try:
            validate_run(run)
            print(f"ok: {run} matches run schema version {load_schema()['properties']['schema_version']['const']}")
        except HarnessError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())
