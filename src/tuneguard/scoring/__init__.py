"""The shared forward-pass engine (per-token log-probs + Min-K%++ moments) and its cache."""

from tuneguard.scoring.engine import ScoringEngine, TokenScores, main_process

__all__ = ["ScoringEngine", "TokenScores", "main_process"]
