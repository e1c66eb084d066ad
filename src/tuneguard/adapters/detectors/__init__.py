"""Backdoor detectors behind a registry: one module per detector, each exposing ``DETECTOR`` (a class)."""

from __future__ import annotations

import importlib

from tuneguard.adapters.detectors.base import Calibration, Detector, DetectorResult, calibrate
from tuneguard.errors import TuneguardError

# name -> module; adding a detector = one module + one line here.
DETECTORS = {
    "weights": "tuneguard.adapters.detectors.weights",
    "behavioural": "tuneguard.adapters.detectors.behavioural",
}


def detector_class(name: str) -> type:
    """The detector class registered as ``name``."""
    if name not in DETECTORS:
        raise TuneguardError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
    return importlib.import_module(DETECTORS[name]).DETECTOR


__all__ = ["DETECTORS", "Calibration", "Detector", "DetectorResult", "calibrate", "detector_class"]
