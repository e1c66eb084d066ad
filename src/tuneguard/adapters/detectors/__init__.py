"""Backdoor detectors behind a registry: one module per detector, a ``Detector`` subclass each.

Adding a detector = one module + one ``DETECTORS.register`` line here; `scan` and `backdoor` read the registry.
"""

from __future__ import annotations

from typing import Any

from tuneguard.adapters.detectors.base import Calibration, Detector, DetectorResult, calibrate
from tuneguard.errors import TuneguardError
from tuneguard.registry import Registry

DETECTORS: Registry[Detector] = Registry("detector", "tuneguard.adapters.detectors.base:Detector")
DETECTORS.register("weights", "tuneguard.adapters.detectors.weights:WeightDetector")
DETECTORS.register("behavioural", "tuneguard.adapters.detectors.behavioural:BehaviouralDetector")


def make_detector(name: str, *, base: Any = None, progress: bool = False, **params: Any) -> Detector:
    """Detector ``name`` built with ``params``; one that ``needs_base`` gets ``base`` (a reference or LoadedModel)."""
    cls = DETECTORS.get(name)
    if not cls.needs_base:
        return cls(progress=progress, **params)
    if base is None:
        raise TuneguardError(f"{cls.label()} needs the base model the adapters were trained from: pass --base MODEL")
    return cls(base, progress=progress, **params)


__all__ = ["DETECTORS", "Calibration", "Detector", "DetectorResult", "calibrate", "make_detector"]
