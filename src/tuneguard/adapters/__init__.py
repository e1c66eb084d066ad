"""LoRA adapter backdoors: poisoning classifier data, training and evaluating classifier adapters, detectors behind a
registry (weight-level and behavioural), calibration, scanning, and populations for measuring detectors."""

from tuneguard.adapters.adapter_files import AdapterFiles, read_adapter
from tuneguard.adapters.detectors import DETECTORS, Calibration, Detector, DetectorResult, calibrate, make_detector
from tuneguard.adapters.discovery import find_adapters
from tuneguard.adapters.poison import PoisonManifest, apply_trigger, poison, write_poisoned
from tuneguard.adapters.triggers import ALT_TRIGGER, FAMILIES, MAIN_TRIGGER, make_triggers

__all__ = [
    "ALT_TRIGGER", "DETECTORS", "FAMILIES", "MAIN_TRIGGER", "AdapterFiles", "Calibration", "Detector",
    "DetectorResult", "PoisonManifest", "apply_trigger", "calibrate", "find_adapters", "make_detector",
    "make_triggers", "poison", "read_adapter", "write_poisoned",
]
