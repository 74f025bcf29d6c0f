"""Run folders and `run.json`: self-describing, written as each case finishes, never overwritten.

The record's layout is described once, in harness/records.py.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.errors import HarnessError
from harness.machine import commit_info, machine_info, package_versions
from harness.migrations import OLDEST_VERSION, migrate
from harness.records import SCHEMA_VERSION, RunRecord, check_record
from harness.suite import CaseConfig, MeasureConfig, Suite, from_json, to_json

RUN_FILE = "run.json"


def new_run_dir(out: Path, suite_name: str) -> Path:
    """A fresh folder `OUT/<suite>-<UTC time>`; a suffix is added rather than reuse one."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    base = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', suite_name)}-{stamp}"
    for attempt in range(1000):
        path = out / (base if attempt == 0 else f"{base}-{attempt}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise HarnessError(f"cannot create a results folder under {out}: {exc.strerror}; pass --out DIR") from None
    raise HarnessError(f"too many runs named {base} in {out}")


def new_run(suite: Suite, quick: bool, command: list[str]) -> RunRecord:
    """The run record before any case has run."""
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "running",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "finished": None,
        "command": command,
        "quick": quick,
        "suite": {
            "name": suite.name,
            "description": suite.description,
            "path": suite.path,
            "sha256": suite.sha256,
            "text": suite.text,
        },
        "machine": machine_info(),
        "packages": package_versions(),
        "commit": commit_info(),
        "parts": [
            {
                "name": p.name,
                "description": p.description,
                "measure": to_json(p.measure),
                "tables": list(p.tables),
                "baseline": p.baseline,
            }
            for p in suite.parts
        ],
        "cases": [to_json(c) | {"runs": []} for c in suite.cases],
    }


def save_run(run_dir: Path, run: dict[str, Any]) -> None:
    """Atomic rewrite: a reader (or a crash) never sees half a file."""
    tmp = run_dir / (RUN_FILE + ".tmp")
    tmp.write_text(json.dumps(run, indent=1, default=float))
    os.replace(tmp, run_dir / RUN_FILE)


def read_run_json(run_dir: str | Path) -> tuple[Any, Path]:
    """The parsed run.json of a run folder (or the file itself), and its path; one-line errors."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / RUN_FILE
    try:
        return json.loads(path.read_text()), path
    except FileNotFoundError:
        raise HarnessError(f"no {RUN_FILE} at {path}; pass a folder written by `python -m harness run`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise HarnessError(f"{path} is not valid JSON ({exc}); was the run interrupted while writing?") from None


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Read a run.json (folder or file path), bring an older schema version forward (harness/migrations.py)
    and check it against the record's models; one-line errors."""
    run, path = read_run_json(run_dir)
    found = run.get("schema_version") if isinstance(run, dict) else None
    if not (type(found) is int and OLDEST_VERSION <= found <= SCHEMA_VERSION):  # `type`: true is not version 1
        newer = type(found) is int and found > SCHEMA_VERSION
        raise HarnessError(f"{path} has results schema version {found!r}; this harness reads versions {OLDEST_VERSION} "
                           f"to {SCHEMA_VERSION}" + ("; it was written by a newer harness: read it with that" if newer else ""))  # fmt: skip
    old = found != SCHEMA_VERSION
    # Where an old record goes wrong, say which version it claimed: its keys are that version's, not today's.
    claimed = f" (a version {found} record, read as version {SCHEMA_VERSION})" if old else ""
    try:
        run = migrate(run)
        # Only a migration may excuse a missing key: a current file's `not_recorded` would be a forgery.
        check_record(run, absent=run.get("not_recorded", ()) if old else ())
    except ValueError as exc:
        raise HarnessError(f"{path}: {exc}{claimed}; was it written by this harness, and completely?") from None
    # The schema has the types; the configs' own range checks (workers >= 1, ...) run in their dataclasses.
    checks = [(f"$.parts[{i}].measure", MeasureConfig, p["measure"]) for i, p in enumerate(run["parts"])]
    checks += [(f"$.cases[{i}]", CaseConfig, {k: v for k, v in c.items() if k != "runs"}) for i, c in enumerate(run["cases"])]
    for where, model, data in checks:
        try:
            from_json(model, data)
        except ValidationError as exc:
            error = exc.errors()[0]
            where += "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in error["loc"])
            raise HarnessError(f"{path}: {where}: {error['msg']}; was it written by this harness, and completely?") from None
    return run
