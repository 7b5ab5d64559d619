"""Scores of predicted against real cells."""

from ._prediction import log_normalized, score_log_expression, score_prediction, top_degs

__all__ = ["log_normalized", "score_log_expression", "score_prediction", "top_degs"]
