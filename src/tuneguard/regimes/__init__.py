"""Experiment regimes (the columns of ``tuneguard run``'s table): how the target model is obtained from the base.

One module per regime, each a :class:`tuneguard.regimes.base.Regime` with its declared options; adding a defence =
one module + one ``REGIMES.register`` line.
"""

from tuneguard.registry import Registry

REGIMES = Registry("regime", "tuneguard.regimes.base:Regime")
REGIMES.register("pretrained", "tuneguard.regimes.pretrained:Pretrained")
REGIMES.register("full", "tuneguard.regimes.finetune:FullFineTuning")
REGIMES.register("lora", "tuneguard.regimes.finetune:LoRAFineTuning")
REGIMES.register("soft", "tuneguard.regimes.soft:Soft")
REGIMES.register("dp", "tuneguard.regimes.dp:DPSGD")
REGIMES.register("goldfish", "tuneguard.regimes.goldfish:Goldfish")

__all__ = ["REGIMES"]
