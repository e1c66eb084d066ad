"""ROC figures: log-log (the low-FPR regime that matters for privacy, Carlini et al. 2022) and linear; the PNG
writer the other reports share."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from tuneguard.files import atomic_write_bytes

_STYLES = ("-", "--", ":", "-.")
DPI = 120
WIDTH_IN = 6.4  # 768 px at DPI: narrower than the report page's column, so the browser never shrinks the text
TITLE_CHARS = 78  # characters of a 10 pt title line that fit across WIDTH_IN


def save_figure(fig, path: str | Path, *, dpi: int = 120) -> Path:
    """Write a matplotlib figure as PNG atomically (a crash never leaves half a file) and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return atomic_write_bytes(Path(path), buf.getvalue())


def roc_figures(curves: dict[str, tuple[Sequence[float], Sequence[float]]], out_prefix: Path, *, title: str = "",
                n_nonmembers: int | None = None, fpr_levels: Sequence[float] = ()) -> list[Path]:
    """Write ``<prefix>_loglog.png`` and ``<prefix>_linear.png`` (see :func:`roc_figure`); return their paths."""
    out_prefix = Path(out_prefix)
    return [save_figure(roc_figure(curves, scale, title=title, n_nonmembers=n_nonmembers, fpr_levels=fpr_levels),
                        out_prefix.with_name(f"{out_prefix.name}_{scale}.png"), dpi=DPI)
            for scale in ("loglog", "linear")]


def roc_figure(curves: dict[str, tuple[Sequence[float], Sequence[float]]], scale: str, *, title: str = "",
               n_nonmembers: int | None = None, fpr_levels: Sequence[float] = ()):
    """One ROC figure, ``scale`` "loglog" (the low-FPR regime that matters for privacy) or "linear".

    ``curves`` maps a name to its (fpr, tpr) points in ROC order; the legend, beneath the axes so it never hides a
    curve, shows "name (AUC 0.xx)". The dashed diagonal is chance; dotted verticals mark ``fpr_levels`` (the FPR
    levels the report quotes TPR at). The log-log x axis runs from 1/n to 1, n = ``n_nonmembers``
    (default: inferred as 1 / the smallest non-zero FPR), since no lower FPR is measurable. The title is wrapped to
    the figure's width; the PNG is ``WIDTH_IN * DPI`` px wide, which the report page shows unscaled.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter
    from sklearn.metrics import auc

    curves = {name: (np.asarray(f, dtype=float), np.asarray(t, dtype=float)) for name, (f, t) in curves.items()}
    positive = [f[f > 0].min() for f, _ in curves.values() if (f > 0).any()]
    floor = 1 / n_nonmembers if n_nonmembers else min(positive, default=1e-3)
    legend_rows = -(-(len(curves) + 2) // 2)  # two columns: the curves, chance and the FPR marks
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 5.0 + 0.2 * legend_rows), layout="constrained")
    lo = floor if scale == "loglog" else 0.0
    ax.plot([lo, 1], [lo, 1], color="grey", lw=0.9, ls="--", label="chance (TPR = FPR)")
    for i, (name, (fpr, tpr)) in enumerate(curves.items()):
        # Ten colours, then the next line style, so a dozen attacks stay distinguishable.
        ax.plot(fpr, tpr, color=f"C{i % 10}", ls=_STYLES[i // 10 % len(_STYLES)], lw=1.5,
                label=f"{name} (AUC {auc(fpr, tpr):.2f})")
    # On linear axes the 0.1% and 1% marks would sit on the y axis: only the visible ones are drawn.
    marks = [a for a in fpr_levels if a >= lo and (scale == "loglog" or a >= 0.05)]
    for k, alpha in enumerate(marks):
        ax.axvline(alpha, color="black", lw=0.8, ls=":", label="FPR levels of the table" if k == 0 else None)
        ax.annotate(f"FPR {alpha * 100:g}%", (alpha, 1), xycoords=("data", "axes fraction"), xytext=(2, -10),
                    textcoords="offset points", fontsize=8)
    if scale == "loglog":
        ax.set_xscale("log")
        ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v * 100:g}%"))
    ax.set_xlim(lo, 1)
    ax.set_ylim(lo, 1.0 if scale == "loglog" else 1.01)
    ax.set_xlabel("false positive rate (non-members wrongly accused)", fontsize=9)
    ax.set_ylabel("true positive rate (members found)", fontsize=9)
    heading = f"ROC, {'log-log' if scale == 'loglog' else 'linear'} axes"
    ax.set_title("\n".join([*textwrap.wrap(title, TITLE_CHARS), heading] if title else [heading]), fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    return fig
