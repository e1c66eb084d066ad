"""Defences for fine-tuning on private data: SOFT (``defenses.soft.run_soft`` with a ``SoftConfig``) and DP-SGD
(``defenses.dp_sgd``).

Each lives in its own module and is imported on use, so choosing one never loads the other's dependencies.
"""
