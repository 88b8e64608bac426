"""Trainable metrics and robust-metric training (R-LPIPS style adversarial training)."""
from lit_attacks.metrics.trained import CheckpointError, TrainedLPIPSDistance, load_trained_lpips
from lit_attacks.robust.ranking import RankingHead, ranking_loss

__all__ = ["CheckpointError", "RankingHead", "TrainedLPIPSDistance", "load_trained_lpips", "ranking_loss"]
