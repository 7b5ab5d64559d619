"""Scores of predicted against real cells, and of how well conditions mix."""

from ._mixing import condition_mixing
from ._prediction import (
    log1p_normalize,
    log_normalized,
    prediction_expression,
    score_log_expression,
    score_prediction,
    top_degs,
)

__all__ = [
    "condition_mixing",
    "log1p_normalize",
    "log_normalized",
    "prediction_expression",
    "score_log_expression",
    "score_prediction",
    "top_degs",
]
