"""Reports on what ran: `run_report` writes DIR/report.html of `mlscale run`.

The building blocks of every self-contained HTML page (sections, tables, embedded
figures) are on the ground floor, in `mlscale.html`, so that any stage can write its own
report; they are re-exported here.
"""
from mlscale.html import Page, escape, figure_to_data_uri, image, table

__all__ = ["Page", "escape", "figure_to_data_uri", "image", "table"]
