"""Self-contained HTML reports: pages with sections, tables and embedded figures."""
from mlscale.report.html import Page, escape, figure_to_data_uri, image, table

__all__ = ["Page", "escape", "figure_to_data_uri", "image", "table"]
