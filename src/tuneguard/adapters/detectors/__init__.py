"""Backdoor detectors behind a registry: one module per detector, a ``Detector`` subclass each.

Adding a detector = one module + one ``DETECTORS.register`` line here; `scan` and `backdoor` read the registry.
"""

from __future__ import annotations

from typing import Any

from tuneguard.adapters.detectors.base import Calibration, Detector, DetectorResult, calibrate, cohort_kind
from tuneguard.errors import TuneguardError
from tuneguard.registry import Registry

DETECTORS: Registry[Detector] = Registry("detector", "tuneguard.adapters.detectors.base:Detector")
DETECTORS.register("weights", "tuneguard.adapters.detectors.weights:WeightDetector")
DETECTORS.register("behavioural", "tuneguard.adapters.detectors.behavioural:BehaviouralDetector")


def make_detector(name: str, *, base: Any = None, progress: bool = False, **params: Any) -> Detector:
    """Detector ``name`` built with ``params``; one that ``needs_base`` or ``reads_base`` gets ``base`` (a reference,
    BaseModels or LoadedModel; only the former need it)."""
    cls = DETECTORS.get(name)
    if cls.needs_base and base is None:
        raise TuneguardError(f"{cls.label()} needs the base model the adapters were trained from: pass --base MODEL")
    if cls.needs_base or cls.reads_base:
        return cls(base, progress=progress, **params)
    return cls(progress=progress, **params)


__all__ = ["DETECTORS", "Calibration", "Detector", "DetectorResult", "calibrate", "cohort_kind", "make_detector"]
