"""What the metrics cost: ``evaluate`` (AUC, TPR@FPR and their vectorised stratified bootstrap) against a plain loop
over the same resamples calling scikit-learn, measured in the same run.

    python bench/bench_metrics.py                       # a few seconds; writes bench/bench_metrics.json
    python bench/bench_metrics.py --out /tmp/metrics.json --draws 2000

Scores are rounded to one decimal, so they hold many ties (as real attack scores do, e.g. a tree ensemble's). The
loop is the baseline: one resample, one ``roc_auc_score`` and one ``roc_curve`` per draw. The vectorised bootstrap
once had to stay under 1 s for 400 rows and 1,000 draws (a test used to assert it); the table shows that budget.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from tuneguard.files import atomic_write_json
from tuneguard.metrics import ALPHAS, evaluate
from tuneguard.report.table import format_table

BUDGET_SECONDS = 1.0  # for 400 rows and 1,000 draws


def tied_scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` members and ``n`` non-members, scores rounded to one decimal (many ties), members shifted up."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n, int), np.zeros(n, int)]
    return y, np.round(rng.normal(size=2 * n) + 0.6 * y, 1)


def loop_bootstrap(y: np.ndarray, s: np.ndarray, draws: int, seed: int) -> None:
    """The baseline: resample members and non-members separately, then scikit-learn per draw."""
    rng = np.random.default_rng(seed)
    mem, non = s[y == 1], s[y == 0]
    labels = np.r_[np.ones(len(mem), int), np.zeros(len(non), int)]
    for _ in range(draws):
        sb = np.r_[rng.choice(mem, len(mem)), rng.choice(non, len(non))]
        roc_auc_score(labels, sb)
        fpr, tpr, _ = roc_curve(labels, sb, drop_intermediate=False)
        for alpha in ALPHAS:
            tpr[fpr <= alpha].max()


def best_of(repeats: int, fn) -> float:
    """The fastest of ``repeats`` timed calls (the least disturbed by other work on the machine)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=1000, help="bootstrap draws; default: %(default)s")
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 5000],
                        help="members (= non-members) per case; default: %(default)s")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats, the best kept; default: %(default)s")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"), help="JSON written here")
    args = parser.parse_args(argv)

    rows = []
    for n in args.sizes:
        y, s = tied_scores(n, seed=n)
        vectorised = best_of(args.repeats, lambda: evaluate(y, s, n_boot=args.draws, seed=0))
        loop = best_of(1, lambda: loop_bootstrap(y, s, args.draws, seed=0))
        row = {"rows": 2 * n, "distinct scores": int(len(np.unique(s))), "draws": args.draws,
               "evaluate s": round(vectorised, 4), "loop s": round(loop, 4), "speed-up": round(loop / vectorised, 1)}
        if 2 * n == 400 and args.draws == 1000:
            row["within 1 s budget"] = vectorised < BUDGET_SECONDS
        rows.append(row)
    columns = ["rows", "distinct scores", "draws", "evaluate s", "loop s", "speed-up"]
    columns += ["within 1 s budget"] if any("within 1 s budget" in r for r in rows) else []
    print(format_table(rows, columns, title="evaluate() with its bootstrap vs a scikit-learn loop over the resamples"))
    atomic_write_json(args.out, {"draws": args.draws, "repeats": args.repeats, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
