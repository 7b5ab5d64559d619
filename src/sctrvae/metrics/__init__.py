"""Scores of predicted against real cells."""

from ._prediction import (
    log1p_normalize,
    log_normalized,
    prediction_expression,
    score_log_expression,
    score_prediction,
    top_degs,
)

__all__ = [
    "log1p_normalize",
    "log_normalized",
    "prediction_expression",
    "score_log_expression",
    "score_prediction",
    "top_degs",
]
