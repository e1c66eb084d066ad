"""Privacy-utility experiments: datasets × regimes (``tuneguard.regimes``: pretrained, full FT, LoRA, SOFT at several
ratios, DP-SGD, ...) × attacks, from one TOML file; every cell is run once, saved, and reused while everything that
decided it is unchanged.

The file is parsed into typed, validated settings (:class:`Experiment`, ``schema``) by ``loader`` before any model
loads: an unknown key or a bad value fails in milliseconds with one line naming the file, the table and the valid
options. ``runner`` runs the cells, ``cells`` keys, saves and reuses them, ``texts`` draws each dataset's members and
non-members. Output (in the experiment's ``out`` directory, rendered by ``tuneguard.report.experiment``):
``results.json``, ``table1.txt``, ``tradeoff.png`` and ``report.html``.
"""

from tuneguard.experiment.cells import cell_key_parts, cell_path
from tuneguard.experiment.loader import load_experiment, select_regimes
from tuneguard.experiment.runner import run_cell, run_experiment, settings_of
from tuneguard.experiment.schema import AttackSuite, Column, Dataset, Experiment
from tuneguard.experiment.texts import draw_texts

__all__ = [
    "AttackSuite", "Column", "Dataset", "Experiment", "cell_key_parts", "cell_path", "draw_texts", "load_experiment",
    "run_cell", "run_experiment", "select_regimes", "settings_of",
]
