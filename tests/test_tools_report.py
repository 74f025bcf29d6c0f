"""The "which tool" tables (issue 21) on cases whose FPS is set by hand: the fastest configuration per tool and
cost, the crossover cost against vecenv, the layout grid, and the crossover plot's lines."""

from __future__ import annotations

import pytest

from harness.analysis import case_stats
from harness.plots import crossover_figure
from harness.report import HEADERS, TABLES, TableContext
from harness.report.tools import crossover_lines, speedup_over

THROUGHPUT = {"measure": {"mode": "throughput"}}
STEPS = 1024


def _case(backend: str, fps: float, cost_ms: float = 0.0, kind: str = "busy", workers: int = 1, envs: int = 1,
          options: dict | None = None, torch_threads: int | None = None) -> dict:  # fmt: skip
    # Three repeats at fps x 0.98, 1, 1.02: geometric mean ~ fps.
    runs = [{"status": "ok", "iterations": [{"steps": STEPS, "warmup": False, "sync_s": 0.0, "collect_s": STEPS / (fps * f),
                                             "train_s": 0.0, "total_s": STEPS / (fps * f)}]}
            for f in (0.98, 1.0, 1.02)]  # fmt: skip
    return {"id": f"p/{backend}{cost_ms}{kind}{workers}x{envs}{options}{torch_threads}", "part": "p",
            "label": f"{backend} +{cost_ms}", "runs": runs, "torch_threads": torch_threads,
            "backend": {"name": backend, "workers": workers, "envs_per_worker": envs, "inference": "worker",
                        "options": options or {}, "schedule": "sync"},
            "env": {"id": "Pendulum-v1", "step_cost_ms": cost_ms, "step_cost_kind": kind}, "hyperparameters": {}}  # fmt: skip


def _stats(cases: list[dict]):
    return [case_stats(c, THROUGHPUT, cpus=2) for c in cases]


# FPS by tool and busy cost (ms): vecenv wins cost-free; multiprocessing from 1 ms on; ray only at 5 ms.
GRID = {
    "serial": {0.0: 1000, 0.2: 500, 1.0: 200, 5.0: 50},
    "vecenv": {0.0: 4000, 0.2: 900, 1.0: 250, 5.0: 55},
    "multiprocessing": {0.0: 2000, 0.2: 800, 1.0: 380, 5.0: 95},
    "ray_local": {0.0: 1500, 0.2: 950, 1.0: 240, 5.0: 90},
}


def _grid() -> list[dict]:
    return [_case(tool, fps, cost) for tool, row in GRID.items() for cost, fps in row.items()]


def test_crossover_is_the_lowest_cost_from_which_a_tool_beats_vecenv_at_every_larger_cost():
    lines = crossover_lines(_stats(_grid()))
    # multiprocessing: loses at 0 and 0.2, wins at 1 and 5. ray_local wins at 0.2, loses at 1, wins at 5: crossover 5.
    assert "multiprocessing (busy): measurably faster than vecenv from 1 ms per step on (the crossover)." in lines
    assert "ray_local (busy): measurably faster than vecenv from 5 ms per step on (the crossover)." in lines


def test_a_point_estimate_inside_the_noise_is_not_a_win():
    # 1% faster at 1 ms with repeats 2% apart: not measurably faster, so no crossover.
    cases = _stats([_case("vecenv", 100, 1.0), _case("multiprocessing", 101, 1.0), _case("serial", 50, 1.0)])
    assert crossover_lines(cases) == ["multiprocessing (busy): never measurably faster than vecenv at the costs measured."]


def test_a_tool_that_never_wins_is_said_to():
    cases = _stats([_case("vecenv", 100, 1.0), _case("multiprocessing", 90, 1.0), _case("serial", 50, 1.0)])
    assert crossover_lines(cases) == ["multiprocessing (busy): never measurably faster than vecenv at the costs measured."]


def test_crossover_table_names_the_fastest_tool_per_cost_and_its_speedup_over_serial_at_that_cost():
    table, _ = TABLES["crossover"].render(TableContext(_stats(_grid()), None, HEADERS["en"]))
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]] for line in table.splitlines()[2:]}
    assert rows["0 (the env alone)"][1].startswith("vecenv") and rows["0 (the env alone)"][2] == "4.00"
    assert rows["1 ms busy"][1].startswith("multiprocessing") and rows["1 ms busy"][2] == "1.90"  # 380 / 200
    assert rows["5 ms busy"][1].startswith("multiprocessing") and rows["5 ms busy"][2] == "1.90"  # 95 / 50


def test_which_tool_ranks_each_tools_fastest_configuration_per_cost():
    cases = [_case("vecenv", 900, envs=8), _case("vecenv", 1200, envs=16), _case("serial", 300),
             _case("multiprocessing", 700, workers=2, envs=4), _case("multiprocessing", 500, workers=8, envs=2)]  # fmt: skip
    table, _ = TABLES["which_tool"].render(TableContext(_stats(cases), None, HEADERS["en"]))
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines()[2:]]
    assert [r[1] for r in rows] == ["vecenv", "multiprocessing", "serial"]
    assert rows[0][2].endswith("16 envs") and rows[1][2].endswith("2w×4e")
    assert rows[2][5] == "baseline"
    assert rows[0][5].startswith("4.00")  # 1200 / 300


def test_layout_grid_puts_each_layout_in_its_column_and_names_the_fastest():
    cases = [_case("multiprocessing", fps, workers=w, envs=16 // w) for w, fps in ((1, 100), (2, 180), (4, 300), (16, 250))]
    cases += [_case("envpool", fps, envs=16, options={"num_threads": t}) for t, fps in ((1, 900), (4, 1100))]
    table, lines = TABLES["layout"].render(TableContext(_stats(cases), None, HEADERS["en"]))
    header, _, *rows = table.splitlines()
    columns = [cell.strip() for cell in header.split("|")[1:-1]]
    assert columns[2:-1] == ["1×16", "2×8", "4×4", "16×1"]
    by_tool = {r.split("|")[1].strip(): [cell.strip() for cell in r.split("|")[1:-1]] for r in rows}
    assert by_tool["multiprocessing"][-1] == "4×4" and by_tool["envpool"][-1] == "4×4"
    assert by_tool["envpool"][columns.index("2×8")] == "–"
    assert "Env cost per step: envpool 0 (the env alone); multiprocessing 0 (the env alone)." not in lines


def test_layout_says_which_tool_ran_at_which_cost_when_they_differ():
    cases = [_case("multiprocessing", 100, 0.2, workers=2, envs=8), _case("envpool", 900, envs=16, options={"num_threads": 2})]
    _, lines = TABLES["layout"].render(TableContext(_stats(cases), None, HEADERS["en"]))
    assert "Env cost per step: envpool 0 (the env alone); multiprocessing 0.2 ms busy." in lines


def test_crossover_plot_draws_one_line_per_tool_through_its_speedups():
    fig = crossover_figure(_stats(_grid()))
    lines = {line.get_label(): line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == set(GRID)
    assert list(lines["multiprocessing"].get_xdata()) == [0.0, 0.2, 1.0, 5.0]
    assert list(lines["multiprocessing"].get_ydata()) == pytest.approx([2.0, 1.6, 1.9, 1.9], rel=1e-3)


def test_speedup_is_the_ratio_of_geometric_means():
    serial, fast = _stats([_case("serial", 100), _case("vecenv", 250)])
    assert speedup_over(serial, fast) == pytest.approx(2.5)
