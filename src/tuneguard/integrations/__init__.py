"""tuneguard inside other people's training loops.

:mod:`tuneguard.integrations.leak`: :class:`LeakMonitor`, the membership leak measured while a model trains (any
loop can drive it); :mod:`tuneguard.integrations.hf`: :class:`LeakCallback`, the monitor as a Hugging Face
``TrainerCallback`` (``Trainer``, TRL's ``SFTTrainer``). Each is imported on use.
"""
