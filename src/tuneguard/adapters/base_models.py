"""The base model a scan is given (``--base``), loaded once per task and shared by the detectors that need it and
the check of which adapter modules would load on it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from tuneguard.adapters.adapter_files import AdapterFiles
from tuneguard.adapters.detectors.base import norm_ref
from tuneguard.errors import TuneguardError

if TYPE_CHECKING:
    from tuneguard.models import LoadedModel


def task_of(adapter: AdapterFiles) -> str:
    """The model head an adapter is loaded on: a classification head for PEFT's SEQ_CLS, else the causal LM."""
    return "seq-cls" if adapter.task_type == "SEQ_CLS" else "causal-lm"


class BaseModels:
    """One base model reference (or loaded model), loaded on first use for each task (causal-lm / seq-cls)."""

    def __init__(self, base: str | os.PathLike | LoadedModel) -> None:
        self.loaded: dict[str, LoadedModel] = {}
        if isinstance(base, (str, os.PathLike)):
            self.ref = str(base)
        else:
            self.ref = base.ref
            self.loaded["seq-cls" if "SequenceClassification" in type(base.model).__name__ else "causal-lm"] = base
        self._shapes: dict[str, dict[str, tuple[int, int] | None]] = {}

    @classmethod
    def of(cls, base: str | LoadedModel | BaseModels | None) -> BaseModels | None:
        """``base`` as a BaseModels (None stays None)."""
        return base if base is None or isinstance(base, BaseModels) else cls(base)

    def get(self, task: str) -> LoadedModel:
        """The base model with the head for ``task``."""
        from tuneguard.models import load_model

        if task not in self.loaded:
            self.loaded[task] = load_model(self.ref, task=task)
        return self.loaded[task]

    def module_shapes(self, task: str) -> dict[str, tuple[int, int] | None]:
        """Every module of the base: (d_in, d_out) for a Linear or GPT-2 Conv1D, None for other kinds."""
        if task not in self._shapes:
            self._shapes[task] = {name: _shape(m) for name, m in self.get(task).model.named_modules()}
        return self._shapes[task]

    def check(self, adapter: AdapterFiles) -> LoadedModel:
        """The base model for ``adapter``, after checking that the adapter names this base and fits it.

        A LoRA pair for a module the base lacks is recorded in ``adapter.unloaded`` (PEFT ignores it on load, so no
        statistic may count it); a module of another size, or no module at all in the base, is an error.
        """
        base = self.get(task_of(adapter))
        named = adapter.base_model
        known = {norm_ref(r) for r in (self.ref, base.ref, getattr(base.model.config, "name_or_path", "") or "") if r}
        if named and norm_ref(named) not in known:
            raise TuneguardError(f"{adapter.path} was trained from base model {named!r}, not {self.ref!r}; "
                                 f"pass --base {named}")
        shapes = self.module_shapes(task_of(adapter))
        for pair in adapter.pairs:
            if pair.module not in shapes:
                adapter.unloaded[pair.module] = f"the base model {self.ref} has no such module"
                continue
            want = (int(np.prod(pair.a_shape[1:])), pair.b_shape[0])
            have = shapes[pair.module]
            if have is not None and have != want:
                raise TuneguardError(f"{adapter.path}: module {pair.module} is {want[0]}->{want[1]} in the adapter but "
                                     f"{have[0]}->{have[1]} in {self.ref}; it was trained for another base")
        if not adapter.pairs:
            raise TuneguardError(f"{adapter.path}: the base model {self.ref} has none of the adapter's "
                                 f"{len(adapter.all_pairs)} LoRA modules (e.g. {adapter.all_pairs[0].module}); it was "
                                 "trained for another base")
        return base


def _shape(module) -> tuple[int, int] | None:
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":  # GPT-2 stores the weight transposed (d_in, d_out)
        return tuple(module.weight.shape)
    return None
