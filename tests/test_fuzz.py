"""Property-based: whatever a suite file or a run.json holds, the harness answers with a result or one
`error:` line and exit status 2, never a traceback (issue 11). Hypothesis generates the damage."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import cli
from harness.errors import HarnessError
from harness.suite import load_suite
from tests.conftest import REPO
from tests.test_cli import run_suite_text

BASE_SUITE: dict[str, Any] = {
    "suite": {"name": "fuzz", "tables": ["speed", "phases"], "baseline": "serial"},
    "env": {"id": "Pendulum-v1", "step_cost_ms": 0.0},
    "ppo": {"preset": "report", "steps_per_iteration": 64},
    "measure": {"iterations": 1, "repeats": 1, "warmup_iterations": 0},
    "cases": [{"backend": "serial"}, {"backend": "multiprocessing", "workers": [2, 4], "options": {"timeout_s": 30}}],
}

scalars = st.one_of(
    st.none(),  # dropped by the TOML writer: a missing key
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                      max_leaves=6)  # fmt: skip


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value == math.inf else "-inf" if value == -math.inf else repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes (\uXXXX, \", \\) are TOML's too
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None) + "}"


def _toml(suite: dict[str, Any]) -> str:
    lines = []
    for table, body in suite.items():
        if table == "cases":
            for case in body if isinstance(body, list) else [body]:
                lines.append("[[cases]]")
                items = case.items() if isinstance(case, dict) else []
                lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in items if v is not None]
        elif isinstance(body, dict):
            lines.append(f"[{json.dumps(table)}]")
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in body.items() if v is not None]
        elif body is not None:
            lines.insert(0, f"{json.dumps(table)} = {_toml_value(body)}")
    return "\n".join(lines) + "\n"


@st.composite
def damaged_suites(draw: st.DrawFn) -> str:
    suite = json.loads(json.dumps(BASE_SUITE))
    for _ in range(draw(st.integers(1, 3))):
        table = draw(st.sampled_from([*suite, "unknown"]))
        target = suite.setdefault(table, {}) if table != "cases" else draw(st.sampled_from(suite["cases"]))
        if not isinstance(target, dict):
            continue
        key = draw(st.sampled_from([*target, draw(st.text(min_size=1, max_size=10))]))
        target[key] = draw(values)
    return _toml(suite)


def _one_line_error(exc: HarnessError) -> None:
    message = str(exc)
    assert message and "\n" not in message.strip() and "Traceback" not in message


def _loads_or_fails_in_one_line(content: bytes) -> None:
    """`content` as a suite file: a Suite, or a HarnessError of one line, nothing else."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "suite.toml"
        path.write_bytes(content)
        try:
            load_suite(path)
        except HarnessError as exc:
            _one_line_error(exc)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=damaged_suites())
def test_a_damaged_suite_loads_or_fails_in_one_line(text):
    _loads_or_fails_in_one_line(text.encode())


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=200))
def test_any_bytes_as_a_suite_fail_in_one_line(data):
    _loads_or_fails_in_one_line(data)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    text = _toml(BASE_SUITE | {"cases": [{"backend": "serial"}, {"backend": "vecenv", "envs_per_worker": 2}]})
    run_dir, _ = run_suite_text(tmp_path_factory.mktemp("tiny"), text)
    return run_dir


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _damage(run: dict[str, Any], path: tuple, value: Any, delete: bool) -> None:
    parent = run
    for key in path[:-1]:
        parent = parent[key]
    if delete and isinstance(parent, dict):
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_report_and_compare_on_a_damaged_run_json_answer_in_one_line(tiny_run, data, capsys):
    _damaged_copy_answers_in_one_line(tiny_run, data, capsys)


@pytest.mark.parametrize("version", [1, 2, 3])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_damaged_run_json_of_an_older_version_answers_in_one_line(version, data, capsys):
    """Through harness/migrations.py too: a damaged old record is migrated or refused in one line."""
    _damaged_copy_answers_in_one_line(REPO / "tests" / "fixtures" / "runs" / f"v{version}" / "smoke", data, capsys)


def _damaged_copy_answers_in_one_line(run_dir: Path, data: st.DataObject, capsys: pytest.CaptureFixture) -> None:
    run = json.loads((run_dir / "run.json").read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(run) if p]
        path = data.draw(st.sampled_from(paths))
        _damage(run, path, data.draw(values | st.just(0) | st.just(-1.0)), data.draw(st.booleans()))
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "run"
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("plots", "logs"))
        (copy / "run.json").write_text(json.dumps(run))
        for argv in (["report", str(copy)], ["compare", str(run_dir), str(copy)]):
            capsys.readouterr()
            status = cli.main(argv)
            err = capsys.readouterr().err
            assert status in (0, 2), (argv, status, err)
            if status == 2:
                assert err.startswith("error: ") and err.count("\n") == 1, err
