"""`report.md` from `run.json`: `document` assembles it, `tables` and `claims` are the registries, one
module per study renders its tables, and `cells` holds the formats they share.

`document` is imported on first use: it reads run folders (harness.results), which reads suites, which
check table and claim names against the registries here.
"""

from typing import Any

from harness.report.cells import HEADERS, TableContext
from harness.report.claims import CLAIMS, claim_lines
from harness.report.tables import TABLES

_DOCUMENT = ("REPORT_FILE", "machine_header", "render_markdown", "write_report")


def __getattr__(name: str) -> Any:
    if name in _DOCUMENT:
        from harness.report import document

        return getattr(document, name)
    raise AttributeError(f"module 'harness.report' has no attribute {name!r}")


__all__ = ["CLAIMS", "HEADERS", "TABLES", "TableContext", "claim_lines", *_DOCUMENT]
