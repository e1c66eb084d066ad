"""LoRA adapter backdoors: poisoning classifier data, training and evaluating classifier adapters, two detectors
(weight-level and behavioural) behind a registry, calibration, and populations for measuring detectors."""

from tuneguard.adapters.adapter_files import AdapterFiles, find_adapters, read_adapter
from tuneguard.adapters.detectors import DETECTORS, Calibration, DetectorResult, calibrate, detector_class
from tuneguard.adapters.poison import PoisonManifest, apply_trigger, poison, write_poisoned
from tuneguard.adapters.triggers import ALT_TRIGGER, FAMILIES, MAIN_TRIGGER, make_triggers

__all__ = [
    "ALT_TRIGGER", "DETECTORS", "FAMILIES", "MAIN_TRIGGER", "AdapterFiles", "Calibration", "DetectorResult",
    "PoisonManifest", "apply_trigger", "calibrate", "detector_class", "find_adapters", "make_triggers", "poison",
    "read_adapter", "write_poisoned",
]
