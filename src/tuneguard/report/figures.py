"""ROC figures: log-log (the low-FPR regime that matters for privacy, Carlini et al. 2022) and linear."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import auc

from tuneguard.files import atomic_write_bytes

_STYLES = ("-", "--", ":", "-.")


def roc_figures(curves: dict[str, tuple[Sequence[float], Sequence[float]]], out_prefix: Path, *, title: str = "",
                n_nonmembers: int | None = None) -> list[Path]:
    """Write ``<prefix>_loglog.png`` and ``<prefix>_linear.png``; return their paths.

    ``curves`` maps a name to its (fpr, tpr) points in ROC order; the legend shows "name (AUC 0.xx)". The log-log
    x axis runs from 1/n to 1, n = ``n_nonmembers`` (default: inferred as 1 / the smallest non-zero FPR), since no
    lower FPR is measurable.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    curves = {name: (np.asarray(f, dtype=float), np.asarray(t, dtype=float)) for name, (f, t) in curves.items()}
    positive = [f[f > 0].min() for f, _ in curves.values() if (f > 0).any()]
    floor = 1 / n_nonmembers if n_nonmembers else min(positive, default=1e-3)
    out_prefix = Path(out_prefix)
    paths = []
    for scale in ("loglog", "linear"):
        fig, ax = plt.subplots(figsize=(5.5, 5))
        lo = floor if scale == "loglog" else 0.0
        ax.plot([lo, 1], [lo, 1], color="grey", lw=0.8, ls="--", label="chance")
        for i, (name, (fpr, tpr)) in enumerate(curves.items()):
            # Ten colours, then the next line style, so a dozen attacks stay distinguishable.
            ax.plot(fpr, tpr, color=f"C{i % 10}", ls=_STYLES[i // 10 % len(_STYLES)], lw=1.4,
                    label=f"{name} (AUC {auc(fpr, tpr):.2f})")
        if scale == "loglog":
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlim(lo, 1)
        ax.set_ylim(lo, 1.0 if scale == "loglog" else 1.01)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"{title or 'ROC'} ({'log-log' if scale == 'loglog' else 'linear'})", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        plt.close(fig)
        paths.append(atomic_write_bytes(out_prefix.with_name(f"{out_prefix.name}_{scale}.png"), buf.getvalue()))
    return paths
