"""Reports: terminal tables, ROC figures, self-contained HTML pages, and the membership-inference report."""

from tuneguard.report.figures import roc_figures
from tuneguard.report.html import html_page, html_table, img_tag
from tuneguard.report.mia import confounding_warning, mia_table, write_mia_report
from tuneguard.report.table import format_table

__all__ = ["confounding_warning", "format_table", "html_page", "html_table", "img_tag", "mia_table", "roc_figures",
           "write_mia_report"]
