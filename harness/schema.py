"""Checks a run.json against `harness/run_schema.json` (JSON Schema draft 2020-12), and writes that file.

`python -m harness.schema RUN_DIR...` exits 0 when every run matches, and 2 with
one line per failing run that names the file and the JSON path of the first
problem, e.g. `error: results/x/run.json: $.cases[0].runs[0].iterations[1].sync_s: expected number, got string`.

The schema is generated from the run record's models (harness/records.py);
`python -m harness.schema --write` regenerates the file after they change.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.records import SCHEMA_VERSION, check_record, run_schema
from harness.results import RUN_FILE, read_run_json

SCHEMA_PATH = Path(__file__).with_name("run_schema.json")
WRITE_COMMAND = "python -m harness.schema --write"


@functools.cache
def load_schema() -> dict[str, Any]:
    """The checked-in run.json schema, read once."""
    return json.loads(SCHEMA_PATH.read_text())


def schema_text() -> str:
    """What `harness/run_schema.json` holds: the schema generated from harness/records.py."""
    return json.dumps(run_schema(), indent=2, ensure_ascii=False) + "\n"


def validate_run(path: str | Path) -> None:
    """Check a run folder (or its run.json) against the schema; raise `HarnessError` with one line if it does not match."""
    run, file = read_run_json(path)
    validate_record(run, str(file))


def validate_record(run: Any, source: str = RUN_FILE) -> None:
    """Check an already-loaded run record against the checked-in schema; `source` names it in the error."""
    try:
        check_record(run, load_schema())
    except ValueError as exc:
        raise HarnessError(f"{source}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.schema", description="Check run.json files against harness/run_schema.json."
    )
    parser.add_argument("runs", nargs="*", type=Path, metavar="RUN_DIR", help="a run folder or its run.json")
    parser.add_argument("--write", action="store_true", help="regenerate harness/run_schema.json from harness/records.py")
    args = parser.parse_args(argv)
    if args.write:
        SCHEMA_PATH.write_text(schema_text())
        print(f"wrote {SCHEMA_PATH} (run schema version {SCHEMA_VERSION})")
    elif not args.runs:
        parser.error("give a RUN_DIR to check, or --write")
    status = 0
    for run in args.runs:
        try:
            validate_run(run)
            print(f"ok: {run} matches run schema version {SCHEMA_VERSION}")
        except HarnessError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())
