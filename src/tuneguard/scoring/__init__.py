"""The shared forward-pass engine (per-token log-probs + Min-K%++ moments) and its cache."""

from tuneguard.scoring.distributed import main_process
from tuneguard.scoring.engine import ScoringEngine
from tuneguard.scoring.token_scores import TokenScores

__all__ = ["ScoringEngine", "TokenScores", "main_process"]
