"""The tables a suite may ask for (`[suite] tables`): name -> title and renderer. A new table is one
module, one line here and its name in harness/names.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.names import TABLE_NAMES, check_registry
from harness.report.cells import TableContext
from harness.report.communication import communication_table
from harness.report.convergence import convergence_table
from harness.report.scaling import scaling_table
from harness.report.speed import overlap_table, phases_table, speed_table
from harness.report.tools import crossover_table, layout_table, which_tool_table


@dataclass(frozen=True)
class Table:
    title: str
    render: Callable[[TableContext], tuple[str, list[str]]]
    """The markdown table and the sentences under it, all computed from the cases."""


TABLES: dict[str, Table] = {
    "speed": Table("Training speed", speed_table),
    "phases": Table("Where the time goes", phases_table),
    "convergence": Table("Convergence", convergence_table),
    "scaling": Table("Scaling", scaling_table),
    "communication": Table("Communication overhead", communication_table),
    "overlap": Table("What overlap buys", overlap_table),
    "which_tool": Table("Which tool", which_tool_table),
    "crossover": Table("Crossover map: the best tool at each env step cost", crossover_table),
    "layout": Table("Layout: the same envs over workers × envs per worker", layout_table),
}
check_registry("tables", TABLES, TABLE_NAMES)
