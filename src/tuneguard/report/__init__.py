"""Reports: terminal tables, ROC figures, self-contained HTML pages, and the membership-inference report.

The names below load on first use (PEP 562), so importing a light module such as ``tuneguard.report.table`` does
not import scikit-learn or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"roc_figures": "figures", "html_page": "html", "html_table": "html", "img_tag": "html",
          "mia_table": "mia", "write_mia_report": "mia", "format_table": "table", "confounding_warning": "verdict",
          "mia_verdict": "verdict", "exposure_rows": "exposure", "Members": "exposure", "next_steps": "advice"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
