"""The names a suite file may use for the report's tables and claims: a leaf module, imported by both the
suite format (`harness.suite`, which checks a suite's `tables` and `claims` against them) and the report
(`harness.report.tables` and `.claims`, whose registries must have exactly these keys, checked when they
are imported). The input's format thus never imports the code that draws the output.

Metric names are not here: no suite names a metric, so they live only in their registry (harness/metrics.py).
"""

TABLE_NAMES = ("speed", "phases", "convergence", "scaling", "communication", "overlap", "which_tool", "crossover", "layout")
"""`[suite] tables`: each a module of harness/report and a line of `harness.report.tables.TABLES`."""

CLAIM_NAMES = (
    "fps",
    "speedup",
    "steps_to_threshold",
    "final_return",
    "sync_ms",
    "transfer_ms",
    "sync_share",
    "transfer_share",
    "communication_share",
)
"""A case's `claims`: the research report's figures, each checked by `harness.report.claims.CLAIMS`."""


def check_registry(kind: str, registry: dict[str, object], names: tuple[str, ...]) -> None:
    """Raise at import if a registry and its names in this module differ (a suite could name a table that
    cannot be drawn, or miss one that can)."""
    if tuple(registry) != names:
        raise RuntimeError(f"harness.names lists {kind} {names}, the registry has {tuple(registry)}: make them the same")
