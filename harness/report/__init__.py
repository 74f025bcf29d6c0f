"""`report.md` from `run.json`: `document` assembles it, `tables` and `claims` are the registries, one
module per study renders its tables, and `cells` holds the formats they share. The suite format does not
import this package: the names it checks come from harness/names.py.
"""

from harness.report.cells import HEADERS, TableContext
from harness.report.claims import CLAIMS, claim_lines
from harness.report.document import REPORT_FILE, machine_header, render_markdown, write_report
from harness.report.tables import TABLES

__all__ = [
    "CLAIMS",
    "HEADERS",
    "REPORT_FILE",
    "TABLES",
    "TableContext",
    "claim_lines",
    "machine_header",
    "render_markdown",
    "write_report",
]
